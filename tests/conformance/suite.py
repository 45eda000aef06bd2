"""The connector conformance suite: one set of behaviours every connector must show on its real system.

A connector's test module subclasses ``ConformanceSuite`` and provides a ``harness`` fixture returning a
``Harness`` for its system (a real slapd, PostgreSQL, MariaDB, SQLite, SCIM server or files). The suite
checks only what the SDK promises (``connectors.base``), for the capabilities the connector declares:

- registration: its kind is reachable through the ``idsync.connectors`` entry point, config model typed;
- full import: every seeded object once, stable non-empty anchors, ``dict[str, list[str]]`` attributes,
  a locator per object, deterministic across runs;
- export: add, update, re-applied add/update/delete have one effect (at-least-once delivery), delete,
  delete of something already gone succeeds, update of a missing object is ``cd-missing-object`` or an add;
- delta import: a watermark, a change and a delete made out of band are seen after it, a ``Checkpoint``
  closes the delta, and a delta from the last checkpoint sees nothing new;
- test connection: ok on the real system; an unreachable one is ``no-start-connection`` (retriable),
  wrong credentials ``no-start-credentials`` (fatal), never a traceback, never the secret.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator

import pytest

from connectors import base, registry
from connectors.base import (
    Checkpoint,
    Connector,
    DeletedObject,
    ImportedObject,
    ImportFailure,
)
from schemas.errors import DataError, FatalError, IdsyncError, RetriableError
from schemas.records import AttrChange, PendingExport

_seq = itertools.count(1)


class Harness(ABC):
    """A connector on its real system, and out-of-band access to that system to check the connector by."""

    #: The config ``kind`` (also the entry point name).
    kind: str
    object_type: str = "person"
    #: An attribute the connector imports and exports, used to find seeded objects in an import.
    key_attr: str
    #: A single-valued attribute the suite changes (out of band and by export).
    change_attr: str
    #: A secret the connector was configured with; must never appear in an error message.
    secret: str | None = None

    @abstractmethod
    def connector(self) -> Connector:
        """A new connector instance on the system (the suite closes it)."""

    @abstractmethod
    def seed(self, keys: list[str]) -> None:
        """Create one object per key out of band (not through the connector): ``key_attr`` = key."""

    @abstractmethod
    def change(self, key: str, value: str) -> None:
        """Set ``change_attr`` of the object with this key, out of band."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object with this key, out of band."""

    @abstractmethod
    def read(self, key: str) -> dict[str, list[str]] | None:
        """The object's attributes as the system holds them (out of band), or None when absent."""

    def add_export(self, key: str) -> PendingExport:
        """A pending add that creates an object with ``key_attr`` = key (override for required attributes)."""
        raise NotImplementedError(f"{type(self).__name__} exports but does not say how to add")

    def unreachable(self) -> Connector | None:
        """The connector pointed at a loopback port where nothing listens (None: not networked)."""
        return None

    def bad_credentials(self) -> Connector | None:
        """The connector with a wrong password (None: the system has no credentials)."""
        return None


def pending(harness: Harness, op: str, **fields: object) -> PendingExport:
    n = next(_seq)
    data: dict[str, object] = {
        "export_id": f"conf-{n}",
        "seq": n,
        "connector": harness.kind,
        "mv_id": f"mv-{n}",
        "op": op,
        "object_type": harness.object_type,
        "dn": "",
        "ts_ms": 0,
    }
    data.update(fields)
    return PendingExport.model_validate(data)


def imported(conn: Connector) -> list[ImportedObject | ImportFailure]:
    assert isinstance(conn, base.FullImport)
    return list(conn.full_import())


def by_key(harness: Harness, items: list[ImportedObject | ImportFailure]) -> dict[str, ImportedObject]:
    out: dict[str, ImportedObject] = {}
    for item in items:
        if isinstance(item, ImportedObject) and item.attributes.get(harness.key_attr):
            key = item.attributes[harness.key_attr][0]
            assert key not in out, f"object {key!r} imported twice"
            out[key] = item
    return out


class ConformanceSuite:
    """Mix into a ``Test...`` class that defines the ``harness`` fixture."""

    @pytest.fixture
    def conn(self, harness: Harness) -> Iterator[Connector]:
        c = harness.connector()
        try:
            yield c
        finally:
            c.close()

    # ------------------------------------------------------------------------------------ registration
    def test_kind_is_registered_by_entry_point(self, harness: Harness, conn: Connector) -> None:
        kinds = registry.load()
        assert harness.kind in kinds, f"kind {harness.kind!r} is not under the idsync.connectors entry point"
        kind = kinds[harness.kind]
        assert kind.config_model.model_fields["kind"].annotation is not str, "kind must be a Literal"
        if isinstance(kind.factory, type):
            assert isinstance(conn, kind.factory)
        assert isinstance(conn, base.Connector)
        assert base.capabilities(conn), "a connector must implement at least one capability"
        assert isinstance(conn.name, str) and conn.name

    # ------------------------------------------------------------------------------------ full import
    def test_full_import_sees_each_seeded_object_once(self, harness: Harness, conn: Connector) -> None:
        if not isinstance(conn, base.FullImport):
            pytest.skip("no full import")
        keys = [f"conf-{harness.kind}-{i}" for i in range(5)]
        harness.seed(keys)
        first = by_key(harness, imported(conn))
        assert set(keys) <= set(first)
        for key in keys:
            obj = first[key]
            assert obj.anchor and isinstance(obj.anchor, str)
            assert obj.object_type == harness.object_type
            assert obj.locator, "every imported object needs a locator a human can find it by"
            for name, values in obj.attributes.items():
                assert isinstance(name, str) and isinstance(values, list)
                assert all(isinstance(v, str) for v in values), name
                assert values, f"{name}: empty value lists are left out, not imported as []"
        anchors = [first[k].anchor for k in keys]
        assert len(set(anchors)) == len(anchors)
        second = by_key(harness, imported(conn))
        assert {k: second[k].anchor for k in keys} == {k: first[k].anchor for k in keys}
        assert {k: second[k].attributes for k in keys} == {k: first[k].attributes for k in keys}

    def test_full_import_after_out_of_band_change_and_delete(self, harness: Harness, conn: Connector) -> None:
        if not isinstance(conn, base.FullImport):
            pytest.skip("no full import")
        keys = [f"conf-{harness.kind}-chg-{i}" for i in range(3)]
        harness.seed(keys)
        before = by_key(harness, imported(conn))
        harness.change(keys[0], "changed-value")
        harness.delete(keys[1])
        after = by_key(harness, imported(conn))
        assert after[keys[0]].attributes[harness.change_attr] == ["changed-value"]
        assert after[keys[0]].anchor == before[keys[0]].anchor
        assert keys[1] not in after
        assert after[keys[2]].attributes == before[keys[2]].attributes

    # ------------------------------------------------------------------------------------ export
    def _export(self, conn: Connector, export: PendingExport) -> base.ExportOutcome:
        assert isinstance(conn, base.Export)
        return conn.apply(export)

    def test_export_add_update_delete_round_trip(self, harness: Harness, conn: Connector) -> None:
        if not isinstance(conn, base.Export):
            pytest.skip("no export")
        key = f"conf-{harness.kind}-exp"
        add = harness.add_export(key)
        outcome = self._export(conn, add)
        assert outcome.anchor, "an applied add reports the new object's anchor"
        held = harness.read(key)
        assert held is not None and held[harness.key_attr] == [key]

        # Re-delivery of the same add: one effect (converted to an update, no duplicate, no error).
        again = self._export(conn, add)
        assert again.anchor == outcome.anchor
        if isinstance(conn, base.FullImport):
            assert list(by_key(harness, imported(conn))).count(key) == 1

        update = pending(
            harness,
            "update",
            anchor=outcome.anchor,
            dn=outcome.dn or add.dn,
            mv_id=add.mv_id,
            attributes={harness.change_attr: AttrChange(op="replace", values=["exported-value"])},
        )
        self._export(conn, update)
        self._export(conn, update)  # re-delivered
        held = harness.read(key)
        assert held is not None and held[harness.change_attr] == ["exported-value"]

        delete = pending(harness, "delete", anchor=outcome.anchor, dn=outcome.dn or add.dn, mv_id=add.mv_id)
        self._export(conn, delete)
        assert harness.read(key) is None
        self._export(conn, delete)  # re-delivered delete of something gone: success, no error

    def test_update_of_a_missing_object(self, harness: Harness, conn: Connector) -> None:
        if not isinstance(conn, base.Export):
            pytest.skip("no export")
        key = f"conf-{harness.kind}-gone"
        add = harness.add_export(key)
        outcome = self._export(conn, add)
        harness.delete(key)
        update = pending(
            harness,
            "update",
            anchor=outcome.anchor,
            dn=outcome.dn or add.dn,
            attributes={harness.change_attr: AttrChange(op="replace", values=["x"])},
        )
        try:
            self._export(conn, update)
        except DataError as err:
            assert err.error_type == "cd-missing-object"
        else:
            # MIM's special action: a missing object's update becomes an add (needs the full image).
            assert harness.read(key) is not None

    # ------------------------------------------------------------------------------------ delta import
    def test_delta_import_sees_changes_after_the_watermark(self, harness: Harness, conn: Connector) -> None:
        if not isinstance(conn, base.DeltaImport):
            pytest.skip("no delta import")
        keys = [f"conf-{harness.kind}-d-{i}" for i in range(3)]
        harness.seed(keys)
        mark = conn.current_watermark()
        assert isinstance(mark, str)
        harness.change(keys[0], "delta-value")
        harness.delete(keys[1])
        items = list(conn.delta_import(mark))
        assert items and isinstance(items[-1], Checkpoint), "a delta ends with a checkpoint"
        changed = [i for i in items if isinstance(i, ImportedObject)]
        seen = {i.attributes[harness.key_attr][0]: i for i in changed if i.attributes.get(harness.key_attr)}
        assert seen[keys[0]].attributes[harness.change_attr] == ["delta-value"]
        assert keys[2] not in seen, "an unchanged object is not in a delta"
        deletes = [i for i in items if isinstance(i, DeletedObject)]
        # Systems that cannot see deletes in a delta say so in their docs and return no DeletedObject.
        if getattr(harness, "delta_sees_deletes", True):
            assert len(deletes) == 1
        last = items[-1]
        assert isinstance(last, Checkpoint)
        rest = [i for i in conn.delta_import(last.watermark) if not isinstance(i, Checkpoint)]
        again = {i.attributes.get(harness.key_attr, [""])[0] for i in rest if isinstance(i, ImportedObject)}
        assert not again & {keys[2]}, "a delta from the last checkpoint must not report unchanged objects"

    # ------------------------------------------------------------------------------------ connection
    def test_test_connection(self, harness: Harness, conn: Connector) -> None:
        if not isinstance(conn, base.ConnectionCheck):
            pytest.skip("no connection check")
        conn.test_connection()

    def test_unreachable_is_no_start_connection(self, harness: Harness) -> None:
        bad = harness.unreachable()
        if bad is None:
            pytest.skip("not a networked connector")
        try:
            assert isinstance(bad, base.ConnectionCheck)
            with pytest.raises(RetriableError) as err:
                bad.test_connection()
            assert err.value.error_type == "no-start-connection"
            self._clean(harness, err.value)
        finally:
            bad.close()

    def test_wrong_credentials_is_no_start_credentials(self, harness: Harness) -> None:
        bad = harness.bad_credentials()
        if bad is None:
            pytest.skip("no credentials")
        try:
            assert isinstance(bad, base.ConnectionCheck)
            with pytest.raises(FatalError) as err:
                bad.test_connection()
            assert err.value.error_type == "no-start-credentials"
            self._clean(harness, err.value)
        finally:
            bad.close()

    @staticmethod
    def _clean(harness: Harness, err: IdsyncError) -> None:
        text = str(err)
        assert "Traceback" not in text and text.strip()
        if harness.secret:
            assert harness.secret not in text, "the secret leaked into an error message"
