"""The metaverse step recomputes only what a message can change (precedence of the touched attributes,
the join-index registration, the outbound rules whose inputs changed). Whatever the sequence of
messages, it must give exactly the states and outputs of a step that recomputes everything."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import metaverse
from engine.rules import Rules, compile_rules
from schemas.codec import as_dict
from schemas.config import IdsyncConfig
from schemas.state import MVObject
from schemas.wire import PendingExport
from tests.engine.helpers import (
    badge_contribution,
    demo_config_dict,
    disconnect,
    hr_attrs,
    hr_contribution,
    image_of,
    ldap_contribution,
    result_of,
)

MV_ID = "mv-1"


def _rules() -> Rules:
    """The demo's rules and an application joining by mail (so the object registers its mail route)."""
    cfg = demo_config_dict()
    cfg["connectors"]["app"] = {**cfg["connectors"]["badge"], "object_type": "account", "anchor": "id"}
    cfg["inbound"].append(
        {
            "connector": "app",
            "object_type": "account",
            "mv_type": "person",
            "join": [{"cs": "mail", "mv": "mail"}],
        }
    )
    return compile_rules(IdsyncConfig.model_validate(cfg))


RULES = _rules()

hr_change = st.fixed_dictionaries(
    {},
    optional={
        "title": st.sampled_from(["Engineer", "Manager", "Director"]),
        "department": st.sampled_from(["Engineering", "Sales"]),
        "last_name": st.sampled_from(["White", "Black"]),
        "status": st.sampled_from(["active", "terminated"]),
        # None: the column goes (a lower-precedence connector's value shows through)
        "email": st.sampled_from(["a@example.org", "b@example.org", None]),
        "location": st.sampled_from(["London", None]),
    },
)
step = st.one_of(
    st.tuples(st.just("hr"), hr_change),
    st.tuples(
        st.just("badge"),
        st.fixed_dictionaries(
            {},
            optional={
                "mail": st.sampled_from([[], ["badge@example.org"]]),
                "location": st.sampled_from([[], ["Paris"]]),
            },
        ),
    ),
    st.tuples(st.just("ldap"), st.sampled_from(["as-exported", "stale"])),
    st.tuples(st.just("result"), st.sampled_from(["applied", "failed"])),
    st.tuples(st.just("disconnect"), st.sampled_from(["badge", "ldap"])),
)


def _messages(steps: list[tuple[str, Any]]) -> list[Any]:
    """The messages of a scenario; export results and ldap images are built from the run's exports."""
    return [("hr-first", {}), *steps]


def _run(
    rules: Rules, steps: list[tuple[str, Any]], full: bool, monkeypatch: pytest.MonkeyPatch
) -> list[Any]:
    with monkeypatch.context() as m:
        if full:
            real = metaverse._sync

            def everything(*args: Any, **kwargs: Any) -> Any:
                kwargs["touched"] = None
                return real(*args[:5], **kwargs)

            m.setattr(metaverse, "_sync", everything)
            m.setattr(metaverse, "unaffected", lambda *a: False)
            m.setattr(metaverse, "member_sync", lambda *a: None)
            m.setattr(metaverse, "_registration_changes", lambda *a: True)
        mv: MVObject | None = None
        hr = dict(hr_attrs())
        version = {"hr": 1, "badge": 0, "ldap": 0}
        exports: list[PendingExport] = []
        trace: list[Any] = []
        sent: list[Any] = []
        ts = 1_000
        for kind, arg in _messages(steps):
            ts += 1_000
            msg: Any
            if kind == "hr-first":
                msg = hr_contribution(rules, MV_ID, hr, projected=True, ts_ms=ts)
            elif kind == "hr":
                for k, v in arg.items():
                    if v is None:
                        hr.pop(k, None)
                    else:
                        hr[k] = [v]
                version["hr"] += 1
                msg = hr_contribution(rules, MV_ID, hr, version=version["hr"], ts_ms=ts)
            elif kind == "badge":
                version["badge"] += 1
                msg = badge_contribution(MV_ID, arg, version=version["badge"], ts_ms=ts)
            elif kind == "ldap":
                version["ldap"] += 1
                adds = [e for e in exports if e.op == "add"]
                if not adds:
                    continue
                image = image_of(adds[-1]) if arg == "as-exported" else {"cn": ["stale"]}
                msg = ldap_contribution(MV_ID, image, adds[-1].dn, version=version["ldap"], ts_ms=ts)
            elif kind == "result":
                if not exports:
                    continue
                msg = result_of(exports[-1], arg, anchor="uuid-1", error_type="cd-error", ts_ms=ts)
            else:
                anchor = "B1" if arg == "badge" else "uuid-1"
                version[arg] += 1
                msg = disconnect(MV_ID, arg, anchor, version=version[arg], ts_ms=ts)
            sent.append(msg)
            mv, outputs = metaverse.metaverse_step(rules, mv, msg)
            exports += [o for o in outputs if isinstance(o, PendingExport)]
            trace.append((kind, None if mv is None else as_dict(mv), [as_dict(o) for o in outputs]))
    SENT[:] = sent
    return trace


#: The messages the last ``_run`` sent (for replaying them in batches).
SENT: list[Any] = []


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step, max_size=12))
def test_incremental_step_equals_full_recomputation(steps: list[tuple[str, Any]]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast = _run(RULES, steps, False, monkeypatch)
        full = _run(RULES, steps, True, monkeypatch)
    assert fast == full


@pytest.mark.interpreted
def test_a_contribution_that_no_outbound_rule_reads_plans_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The skip is real (the test above would pass were it never taken): a badge location change the
    directory's rule does not read... is read (``l``); a badge contribution of nothing new is not."""
    planned: list[str] = []
    real = metaverse._plan

    def counting(rules: Rules, mv: MVObject, rule: Any, ts_ms: int, mark: str | None = None) -> Any:
        planned.append(rule.connector)
        return real(rules, mv, rule, ts_ms, mark)

    monkeypatch.setattr(metaverse, "_plan", counting)
    mv, _ = metaverse.metaverse_step(RULES, None, hr_contribution(RULES, MV_ID, projected=True))
    assert planned == ["ldap"]
    mv, _ = metaverse.metaverse_step(RULES, mv, badge_contribution(MV_ID, {"location": ["London"]}))
    assert planned == ["ldap"]  # the badge's London loses to hr's London: nothing changed
    mv, _ = metaverse.metaverse_step(RULES, mv, badge_contribution(MV_ID, {"mail": []}, version=2))
    assert planned == ["ldap"]
    mv, _ = metaverse.metaverse_step(
        RULES, mv, hr_contribution(RULES, MV_ID, hr_attrs(title="CTO"), version=2)
    )
    assert planned == ["ldap", "ldap"]


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step, max_size=12), cuts=st.lists(st.integers(1, 4), max_size=12))
def test_messages_applied_together_equal_one_by_one(steps: list[tuple[str, Any]], cuts: list[int]) -> None:
    """What the metaverse stage does with a batch (metaverse_steps over one object's messages, one copy
    of the object for all) gives the states and outputs of applying them one by one."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        one_by_one = _run(RULES, steps, False, monkeypatch)
    msgs = list(SENT)
    original = msgs[0]
    mv: MVObject | None = None
    got: list[Any] = []
    i = 0
    for n in [*cuts, len(msgs)]:
        chunk = msgs[i : i + n]
        if not chunk:
            break
        before = None if mv is None else as_dict(mv)
        after, outputs = metaverse.metaverse_steps(RULES, mv, chunk)
        assert (None if mv is None else as_dict(mv)) == before  # the given object is not changed
        got += [as_dict(o) for each in outputs for o in each]
        mv, i = after, i + n
    assert original is msgs[0]
    want = [o for _kind, _state, outputs in one_by_one for o in outputs]
    assert got == want
    assert (None if mv is None else as_dict(mv)) == one_by_one[-1][1]
