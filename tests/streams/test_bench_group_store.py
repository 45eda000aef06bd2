"""``streams.bench.group_store``: one member change of a large group through the metaverse step and its
store. Bytes, not times, are asserted: with chunks a change writes a few chunks, whole it writes the group."""

from __future__ import annotations

from streams.bench.group_store import main, run


def test_a_member_change_writes_chunks_not_the_group() -> None:
    chunks = run(4_000, 4, whole=False)
    whole = run(4_000, 4, whole=True)
    # attribute, flow, references, target DNs, ledger: one chunk each of ~250 values, and the object
    assert chunks["save_bytes"] < 80_000
    assert whole["save_bytes"] > 10 * chunks["save_bytes"]
    assert set(chunks) == {"read_ms", "sync_ms", "save_ms", "warm_ms", "total_ms", "save_bytes"}


def test_the_general_sync_writes_what_the_member_sync_writes() -> None:
    """``--general`` turns the member sync off for the run only; both store the same change."""
    from engine import metaverse

    real = metaverse.member_sync
    general = run(2_000, 3, whole=False, general=True)
    assert metaverse.member_sync is real
    member = run(2_000, 3, whole=False)
    assert general["save_bytes"] == member["save_bytes"]


def test_the_command_prints_its_figures(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--members", "2000", "--changes", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("chunks @2,000 members: read ") and "KB written per change" in out
