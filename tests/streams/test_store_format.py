"""A state directory records how its values are encoded; another format is refused, not misread."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.errors import FatalError
from streams.store import FORMAT_FILE, STATE_FORMAT, PartitionStore, claim_state_dir, state_format


def test_a_new_state_directory_records_the_format(tmp_path: Path) -> None:
    root = tmp_path / "state"
    assert state_format(root) is None
    claim_state_dir(root)
    assert (root / FORMAT_FILE).read_text().strip() == STATE_FORMAT
    claim_state_dir(root)  # the same format again: fine
    assert state_format(root) == STATE_FORMAT


def test_state_of_an_older_idsync_is_refused_with_what_to_do(tmp_path: Path) -> None:
    root = tmp_path / "state"
    PartitionStore(root / "demo.cs" / "p0").close()  # stores, no format recorded: JSON values
    assert state_format(root) == "unknown"
    with pytest.raises(FatalError, match=r"format 'unknown'.*remove the directory"):
        claim_state_dir(root)
    (root / FORMAT_FILE).write_text("msgpack-0\n")
    with pytest.raises(FatalError, match=str(root)):
        claim_state_dir(root)


@pytest.mark.parametrize("before", ["msgpack-2", "msgpack-3", "msgpack-4"])
def test_state_of_the_formats_before_is_read_and_upgraded(tmp_path: Path, before: str) -> None:
    """msgpack-2, -3 and -4 state decodes as it is (msgpack-3, -4 and -5 only added what an older idsync
    would not read: held buckets, metaverse chunks, answered keys and settled targets): the directory is
    kept and recorded in the new format, which the older idsync then refuses."""
    root = tmp_path / "state"
    root.mkdir()
    (root / FORMAT_FILE).write_text(f"{before}\n")
    claim_state_dir(root)
    assert state_format(root) == STATE_FORMAT == "msgpack-5"
