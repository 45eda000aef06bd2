"""Join resolver hooks loaded by dotted path in the rule tests ("tests.engine.hooks:<name>")."""

from __future__ import annotations

from engine.join import JoinCandidate, JoinSubject

NOT_CALLABLE = 42


def same_department(subject: JoinSubject, candidates: list[JoinCandidate]) -> str | None:
    """The candidate in the object's department, or None (no match in this group)."""
    want = subject.attributes.get("department", [""])[0]
    hits = [c.mv_id for c in candidates if c.attributes.get("department", [""])[0] == want]
    return hits[0] if len(hits) == 1 else None


def refuse(subject: JoinSubject, candidates: list[JoinCandidate]) -> str | None:
    return None


def explode(subject: JoinSubject, candidates: list[JoinCandidate]) -> str | None:
    raise RuntimeError(f"no rule for {subject.anchor}")


def stranger(subject: JoinSubject, candidates: list[JoinCandidate]) -> str | None:
    return "not-a-candidate"
