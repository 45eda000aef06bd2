"""The msgspec mirrors (schemas.wire) are the pydantic contracts (schemas.records), field for field, and
the JSON each writes is what the other reads."""

from __future__ import annotations

import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import records, wire
from schemas.codec import decode_import, from_json, to_json

PAIRS = [(mirror, getattr(records, name)) for mirror, name in wire.MIRRORS.items()]
IDS = [name for name in wire.MIRRORS.values()]


def _strip(tp: Any) -> Any:
    """A type without Annotated metadata (constraints are checked by behaviour below)."""
    if typing.get_origin(tp) is typing.Annotated:
        return _strip(typing.get_args(tp)[0])
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if not args:
        return tp
    stripped = tuple(_strip(a) for a in args)
    if origin in (typing.Union, __import__("types").UnionType):
        return frozenset(stripped)
    return (origin, stripped)


def _mirror_of(model: type[BaseModel]) -> type[msgspec.Struct]:
    return next(m for m, name in wire.MIRRORS.items() if name == model.__name__)


def _normalized(tp: Any) -> Any:
    """Nested contracts compare by name: a mirror stands for the model it mirrors."""
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel | msgspec.Struct):
        return tp.__name__
    if isinstance(tp, frozenset):
        return frozenset(_normalized(t) for t in tp)
    if isinstance(tp, tuple):
        return (tp[0], tuple(_normalized(a) for a in tp[1]))
    return tp


@pytest.mark.parametrize(("mirror", "model"), PAIRS, ids=IDS)
def test_mirror_has_the_models_fields_types_and_defaults(mirror: Any, model: type[BaseModel]) -> None:
    hints = typing.get_type_hints(mirror, include_extras=True)
    info = msgspec.inspect.type_info(mirror)
    assert isinstance(info, msgspec.inspect.StructType)
    mine = [
        (
            f.name,
            f.required,
            None
            if f.required
            else (f.default if f.default is not msgspec.NODEFAULT else f.default_factory()),
        )
        for f in info.fields
    ]
    theirs = [
        (
            name,
            field.is_required(),
            None if field.is_required() else field.get_default(call_default_factory=True),
        )
        for name, field in model.model_fields.items()
    ]
    assert mine == theirs
    for name, field in model.model_fields.items():
        assert _normalized(hints[name]) == _normalized(field.annotation), name
    assert model.model_config.get("extra") == "forbid" and info.forbid_unknown_fields
    assert model.model_config.get("frozen") is True and mirror.__struct_config__.frozen


_NAMES = st.sampled_from(["member", "memberOf"])
#: Per contract with value-level changes: its fields that only value-level records carry, and what a valid
#: value-level record holds (ChangeRecord version 2; MVChange version 2, with its counts after).
_VALUE_LEVEL: dict[type[BaseModel], tuple[list[str], dict[str, st.SearchStrategy[Any]]]] = {
    records.ChangeRecord: (
        ["added", "removed"],
        {
            "version": st.just(2),
            "op": st.just("u"),
            "after": st.just({"cn": ["x"]}),
            "changes": st.just(["cn"]),
            "added": st.dictionaries(_NAMES, st.lists(st.sampled_from("ab"), max_size=2), max_size=1),
            "removed": st.dictionaries(_NAMES, st.lists(st.sampled_from("cd"), max_size=2), max_size=2),
        },
    ),
    records.MVChange: (
        ["added", "removed", "counts"],
        {
            "version": st.just(2),
            "op": st.just("update"),
            "attributes": st.just({"cn": ["x"]}),
            "changed": st.just(["member"]),
            "added": st.fixed_dictionaries(
                {"member": st.lists(st.sampled_from("ab"), min_size=1, max_size=2)}
            ),
            "removed": st.none() | st.fixed_dictionaries({"member": st.lists(st.sampled_from("cd"))}),
            "counts": st.fixed_dictionaries({"member": st.integers(0, 60_000)}),
        },
    ),
}


def _model_strategy(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    text = st.text(max_size=8)
    attrs = st.dictionaries(text, st.lists(text, max_size=3), max_size=3)
    overrides: dict[str, st.SearchStrategy[Any]] = {}
    for name, field in model.model_fields.items():
        tp = _strip(field.annotation)
        if tp == (dict, (str, (list, (str,)))):
            overrides[name] = attrs
        elif tp == frozenset({(dict, (str, (list, (str,)))), type(None)}):
            overrides[name] = st.none() | attrs
        elif name == "anchor" and model is records.ChangeRecord:
            overrides[name] = st.text(min_size=1, max_size=8)
        elif name == "source":
            overrides[name] = _model_strategy(records.Source)
        elif name == "attributes" and model is records.PendingExport:
            overrides[name] = st.dictionaries(text, _model_strategy(records.AttrChange), max_size=3)
    value_level = _VALUE_LEVEL.get(model)
    if value_level is not None:
        # Value-level changes have rules of their own (the validator): whole records, and value-level ones.
        fields, by_value = value_level
        whole = st.builds(model, **{**overrides, **dict.fromkeys(fields, st.none())})
        return whole | st.builds(model, **{**overrides, **by_value})
    return st.builds(model, **overrides)


@pytest.mark.parametrize(("mirror", "model"), PAIRS, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_json_round_trips_both_ways(mirror: Any, model: type[BaseModel], data: st.DataObject) -> None:
    original = data.draw(_model_strategy(model))
    raw = original.model_dump_json().encode()
    decoded = from_json(raw, mirror)
    assert model.model_validate_json(to_json(decoded)) == original
    assert from_json(to_json(decoded), mirror) == decoded


@pytest.mark.parametrize(
    "raw",
    [
        b'{"op":"c","anchor":"","object_type":"p","source":{"connector":"hr","version":1,"event_id":"e","ts_ms":1}}',
        b'{"op":"x","anchor":"a","object_type":"p","source":{"connector":"hr","version":1,"event_id":"e","ts_ms":1}}',
        b'{"op":"c","anchor":"a","object_type":"p","extra":1,"source":{"connector":"hr","version":1,"event_id":"e","ts_ms":1}}',
        b'{"op":"c","anchor":"a","object_type":"p","source":{"connector":"hr","version":"v1","event_id":"e","ts_ms":1}}',
        b'{"op":"run-end","run_id":"r","connector":"hr","partition":0,"run_version":"x","ts_ms":1}',
        b"not json",
    ],
)
def test_what_the_model_refuses_the_mirror_refuses(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        records_adapter().validate_json(raw)
    with pytest.raises(ValueError):
        decode_import(raw)


_FEED = '"mv_id":"g","object_type":"group","connectors":["hr"],"ts_ms":1'


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            '{"op":"update","attributes":{},"changed":["m"],"added":{"m":["a"]},"counts":{"m":1},',
            "need version 2",
        ),
        (
            '{"version":2,"op":"create","attributes":{},"changed":["m"],"added":{"m":["a"]},"counts":{"m":1},',
            "'update' only",
        ),
        (
            '{"version":2,"op":"update","attributes":{"m":["a"]},"changed":["m"],"added":{"m":["b"]},"counts":{"m":2},',
            "both whole",
        ),
        (
            '{"version":2,"op":"update","attributes":{},"changed":[],"added":{"m":["a"]},"counts":{"m":1},',
            "not named in changed",
        ),
        (
            '{"version":2,"op":"update","attributes":{},"changed":["m"],"added":{"m":["a"]},"removed":{"m":["a"]},"counts":{"m":1},',
            "both added and removed",
        ),
        ('{"version":2,"op":"update","attributes":{},"changed":["m"],"added":{"m":["a"]},', "counts must"),
        (
            '{"version":2,"op":"update","attributes":{},"changed":["m"],"added":{"m":["a"]},"counts":{"n":1},',
            "counts must",
        ),
        ('{"version":2,"op":"update","attributes":{},"changed":["m"],"counts":{"m":1},', "counts need"),
    ],
)
def test_a_feed_record_breaking_the_value_level_rules_is_refused_by_both(raw: str, reason: str) -> None:
    data = (raw + _FEED + "}").encode()
    with pytest.raises(ValidationError, match=reason):
        records.MVChange.model_validate_json(data)
    with pytest.raises(msgspec.ValidationError, match=reason):
        from_json(data, wire.MVChange)


def test_numbers_as_strings_are_accepted_by_both() -> None:
    raw = (
        b'{"op":"c","anchor":"a","object_type":"p",'
        b'"source":{"connector":"hr","version":"7","event_id":"e","ts_ms":1}}'
    )
    assert records_adapter().validate_json(raw).source.version == 7
    got = decode_import(raw)
    assert isinstance(got, wire.ChangeRecord) and got.source.version == 7


def records_adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(records.ImportMessage)


def test_decode_import_tells_markers_from_records() -> None:
    marker = records.RunMarker(op="run-end", run_id="r", connector="hr", partition=2, run_version=5, ts_ms=1)
    record = records.ChangeRecord(
        op="u",
        anchor="a",
        object_type="p",
        # an attribute value that looks like a marker's op does not make a record a marker
        after={"note": ['"run-end"']},
        source=records.Source(connector="hr", version=1, event_id="e", ts_ms=1),
    )
    assert decode_import(marker.model_dump_json().encode()) == from_json(
        marker.model_dump_json().encode(), wire.RunMarker
    )
    got = decode_import(record.model_dump_json().encode())
    assert isinstance(got, wire.ChangeRecord) and got.after == {"note": ['"run-end"']}
