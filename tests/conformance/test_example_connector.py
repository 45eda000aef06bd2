"""The example third-party connector of docs/connectors.md (docs/examples/jsondir/), registered through
the ``idsync.connectors`` entry point its own pyproject.toml declares, and run through the conformance
suite like every built-in connector: the walkthrough's code is tested, so the doc cannot rot."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors import base, registry
from connectors.base import Connector, CursorExpired, ImportedObject, ImportFailure
from schemas.records import AttrChange, PendingExport
from tests.conformance.suite import ConformanceSuite, Harness, pending

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "jsondir"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The example as pip would install it: its package importable, and a dist-info whose
    entry_points.txt is generated from the example's own pyproject.toml."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]["idsync.connectors"]
    dist = tmp_path / "site" / f"idsync_jsondir-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[idsync.connectors]\n{lines}")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(registry, "_LOADED", False)  # rescan the entry points with the example installed
    kinds = registry.load()
    assert "jsondir" in kinds, "the example's entry point was not found"
    import idsync_jsondir

    assert kinds["jsondir"] is idsync_jsondir.KIND
    yield idsync_jsondir


class JsonDirHarness(Harness):
    kind = "jsondir"
    key_attr = "login"
    change_attr = "title"

    def __init__(self, module: Any, root: Path) -> None:
        self.module = module
        self.root = root
        self.store = module.JsonDirStore(root)
        self.store.create_layout()

    def _connector(self, root: Path) -> Connector:
        # Built the way idsync builds it: the config model validates, the registry's factory builds.
        config = self.module.JsonDirConfig.model_validate({"kind": "jsondir", "root": str(root)})
        return registry.build_connector("people", config)

    def connector(self) -> Connector:
        return self._connector(self.root)

    def seed(self, keys: list[str]) -> None:
        for key in keys:
            self.store.put(f"seed-{key}", {"login": key, "title": "Engineer", "groups": ["staff", "all"]})

    def _anchor(self, key: str) -> str:
        anchor = self.store.find(key)
        assert anchor is not None, key
        return str(anchor)

    def change(self, key: str, value: str) -> None:
        anchor = self._anchor(key)
        self.store.put(anchor, {**self.store.get(anchor), "title": value})

    def delete(self, key: str) -> None:
        self.store.remove(self._anchor(key))

    def read(self, key: str) -> dict[str, list[str]] | None:
        anchor = self.store.find(key)
        if anchor is None:
            return None
        person = self.store.get(anchor)
        return {k: v if isinstance(v, list) else [str(v)] for k, v in person.items()}

    def add_export(self, key: str) -> PendingExport:
        return pending(
            self,
            "add",
            dn=f"uid={key}",
            attributes={
                "login": AttrChange(op="replace", values=[key]),
                "title": AttrChange(op="replace", values=["Engineer"]),
            },
        )

    def unreachable(self) -> Connector | None:
        return self._connector(self.root / "not-mounted")


class TestExampleConnectorConformance(ConformanceSuite):
    @pytest.fixture
    def harness(self, installed: Any, tmp_path: Path) -> Harness:
        return JsonDirHarness(installed, tmp_path / "hr")


def test_example_reports_a_malformed_object_and_goes_on(installed: Any, tmp_path: Path) -> None:
    harness = JsonDirHarness(installed, tmp_path / "hr")
    harness.seed(["ann"])
    (harness.store.objects / "broken.json").write_text("{not json")
    conn = harness.connector()
    assert isinstance(conn, base.FullImport)
    items = list(conn.full_import())
    assert [i.locator for i in items if isinstance(i, ImportFailure)] == ["objects/broken.json"]
    assert [i.attributes["login"] for i in items if isinstance(i, ImportedObject)] == [["ann"]]


def test_example_expired_journal_is_cursor_expired(installed: Any, tmp_path: Path) -> None:
    harness = JsonDirHarness(installed, tmp_path / "hr")
    harness.seed(["ann", "bob"])
    conn = harness.connector()
    assert isinstance(conn, base.DeltaImport)
    mark = conn.current_watermark()
    harness.store.journal_path.write_text(json.dumps({"op": "put", "anchor": "seed-ann"}) + "\n")  # rotated
    with pytest.raises(CursorExpired):
        list(conn.delta_import(mark))
