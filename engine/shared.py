"""A large group's reference maps shared between the metaverse object a step is given and the one it
returns, instead of copied for the step.

A metaverse step copies what it changes (``engine.metaverse.fork``), so a batch that fails leaves the
object as it was and the stage applies its messages one by one. For a 50,000-member group two of those
copies are maps of 50,000 entries — the source link's references (member DN key -> mv_id) and the target's
member DNs (mv_id -> DN) — and every step of a member change changes both, one entry each: copying them is
most of the step's work (~3 ms per step at 50,000 members, C-level; a member change takes two or three).

With a ``SharedMaps`` (``metaverse_steps(shared=...)``), ``fork`` shares every such map of at least
``SHARED_FROM`` entries with the object it was given, and the steps change it in place, journaling each
entry they change (``set_entry``/``pop_entry``: the value it had, or that it had none). If the steps
raise, the journal is undone and the given object is as it was. If they return, the given object's shared
maps hold the new entries too: the caller must go on with the result and drop the given object (the
metaverse stage puts the result in place of the object its batch read; ``changed`` says that the shared
maps changed, since comparing the two objects would not show it).

The active journal is a context variable, so the places that change those maps (a reference answer, the
member sync's registrations, the general registration of a target) need no extra argument; with none
active, or for a map that is not shared, they change the map as before.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

__all__ = ["SHARED_FROM", "SharedMaps", "UnjournaledChange", "journal_of", "pop_entry", "set_entry"]

#: From how many entries ``fork`` shares a reference map instead of copying it.
SHARED_FROM = 1_000

#: Whether ``SharedMaps`` verify the journal by default (``SharedMaps.check``): off in the product (a copy of
#: each shared map per step is what sharing saves); the test suite turns it on (tests/conftest.py), so every
#: in-process test that runs the metaverse stage checks that no change of a shared map escapes the journal.
CHECK = False

#: Journal entries: the map, the key, and the value the key had before (None: none; the maps hold strings).
Journal = list[tuple[dict[str, str], str, str | None]]


class SharedMaps:
    """The maps a step shares with the object it was given, and the journal of their changed entries.

    ``check`` (for tests; None: ``CHECK``, which the test suite turns on): each map is copied when first
    shared, and when the steps end — returned or raised — the journal undone on a copy of the map must give
    that copy back, or ``UnjournaledChange`` is raised: a change made without ``set_entry``/``pop_entry``
    would survive a failed batch's undo."""

    __slots__ = ("_ids", "_snapshots", "_token", "check", "journal", "least")

    def __init__(self, least: int = SHARED_FROM, check: bool | None = None) -> None:
        self._ids: set[int] = set()
        self.journal: Journal = []
        self.least = least
        self.check = CHECK if check is None else check
        self._snapshots: list[tuple[dict[str, str], dict[str, str]]] = []
        self._token: Token[SharedMaps | None] | None = None

    def share(self, entries: dict[str, str]) -> dict[str, str]:
        """``entries`` itself if it is large enough to share (its changes journaled from now on), else a
        copy of it."""
        if len(entries) < self.least:
            return dict(entries)
        if self.check and id(entries) not in self._ids:
            self._snapshots.append((entries, dict(entries)))
        self._ids.add(id(entries))
        return entries

    def shares(self, entries: dict[str, str]) -> bool:
        return id(entries) in self._ids

    @property
    def changed(self) -> bool:
        """Whether the steps changed an entry of a shared map."""
        return bool(self.journal)

    def __enter__(self) -> SharedMaps:
        """Steps run with these maps active (``journal_of`` finds them)."""
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, *_exc: object) -> None:
        """If the steps raised, the journal is undone first."""
        if kind is not None:
            self.undo()
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        if self.check:
            self.verify()

    def verify(self) -> None:
        """Raise ``UnjournaledChange`` unless every change of a shared map since it was shared is in the
        journal (``check``): the journal undone on a copy of each map gives the map as it was shared."""
        for entries, snapshot in self._snapshots:
            undone = dict(entries)
            for changed, key, before in reversed(self.journal):
                if changed is entries:
                    _put_back(undone, key, before)
            if undone != snapshot:
                keys = sorted(k for k in undone.keys() | snapshot.keys() if undone.get(k) != snapshot.get(k))
                raise UnjournaledChange(f"a shared map changed without the journal: keys {keys[:5]}")

    def undo(self) -> None:
        """Put every changed entry back, last change first."""
        for entries, key, before in reversed(self.journal):
            _put_back(entries, key, before)
        self.journal.clear()


def _put_back(entries: dict[str, str], key: str, before: str | None) -> None:
    """Undo one journal entry in ``entries``: the key's value before, or no key."""
    if before is None:
        entries.pop(key, None)
    else:
        entries[key] = before


class UnjournaledChange(Exception):
    """A shared map was changed in place without ``set_entry``/``pop_entry`` (``SharedMaps.check``)."""


_ACTIVE: ContextVar[SharedMaps | None] = ContextVar("idsync_shared_maps", default=None)


def journal_of(entries: dict[str, str]) -> Journal | None:
    """The journal that changes of ``entries`` go to: None unless it is a shared map of the steps running
    (then each change must be journaled before it is made: ``set_entry``/``pop_entry`` do)."""
    shared = _ACTIVE.get()
    if shared is None or not shared.shares(entries):
        return None
    return shared.journal


def set_entry(entries: dict[str, str], key: str, value: str, journal: Journal | None) -> None:
    """``entries[key] = value``, journaled in ``journal`` (``journal_of(entries)``, looked up once for
    many changes of one map; None: not shared)."""
    if journal is not None:
        journal.append((entries, key, entries.get(key)))
    entries[key] = value


def pop_entry(entries: dict[str, str], key: str, journal: Journal | None) -> None:
    """``entries.pop(key, None)``, journaled in ``journal`` as ``set_entry`` does."""
    if key not in entries:
        return
    if journal is not None:
        journal.append((entries, key, entries[key]))
    del entries[key]
