"""Codec round trips: every method of the table, the 14 basic properties, every
field-table type tag (exact bytes and values), and the hand-tuned hot paths
checked against the generic codec."""

from __future__ import annotations

import datetime
import math
import struct
from decimal import Decimal
from typing import Any

import pytest
from amqp_script import method_payload
from hypothesis import given, settings
from hypothesis import strategies as st

from geamqp.exceptions import InvalidFieldError
from geamqp.protocol import spec
from geamqp.protocol.fields import (
    MAX_DEPTH,
    Float32,
    Int8,
    Int16,
    LongStrBytes,
    UInt8,
    UInt16,
    UInt32,
    decode_array,
    decode_table,
    encode_array,
    encode_table,
)
from geamqp.protocol.frames import decode_deliver, encode_ack, encode_content, encode_method
from geamqp.protocol.frames import encode_publish as fast_publish
from geamqp.protocol.properties import (
    PROPERTIES,
    BasicProperties,
    decode_properties,
    encode_properties,
)
from geamqp.protocol.spec import METHODS, Basic

UTC = datetime.timezone.utc
MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z, the last second datetime can hold

# --------------------------------------------------------------------------- strategies

short_strings = st.text(max_size=40).filter(lambda s: len(s.encode("utf-8")) <= 255)
keys = st.text(max_size=12).filter(lambda s: len(s.encode("utf-8")) <= 255)
non_utf8 = st.binary(min_size=1, max_size=20).filter(lambda b: not _is_utf8(b))
timestamps = st.integers(0, MAX_TIMESTAMP).map(
    lambda s: datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(seconds=s))
decimals = st.builds(lambda v, s: Decimal(v).scaleb(-s),
                     st.integers(-(2**31), 2**31 - 1), st.integers(0, 255))

scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-128, 127).map(Int8),
    st.integers(0, 255).map(UInt8),
    st.integers(-(2**15), 2**15 - 1).map(Int16),
    st.integers(0, 2**16 - 1).map(UInt16),
    st.integers(0, 2**32 - 1).map(UInt32),
    st.floats(allow_nan=False),
    st.floats(width=32, allow_nan=False).map(Float32),
    decimals,
    st.text(max_size=30),
    st.binary(max_size=30),
    non_utf8.map(LongStrBytes),
    timestamps,
    st.none(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
tables = st.dictionaries(keys, values, max_size=6)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same type, all the way down (so re-encoding keeps the tag)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)  # -0.0 stays -0.0
    return bool(a == b)


# --------------------------------------------------------------------------- methods

_NON_DEFAULT: dict[str, Any] = {
    "octet": 200,
    "short": 40_000,
    "long": 3_000_000_000,
    "longlong": 2**64 - 2,
    "bit": None,  # the negation of the default
    "shortstr": "n\u00f6n-default \u2603",
    "longstr": b"\x00\xfflong\xce",
    "timestamp": 1_700_000_000,
    "table": {"x-max-length": 10, "nested": {"a": [1, "two", None]}, "flag": True},
}


def _non_default(cls: type[spec.Method]) -> spec.Method:
    defaults = cls()
    kwargs = {}
    for name, domain in cls.FIELDS:
        value = _NON_DEFAULT[domain]
        kwargs[name] = (not getattr(defaults, name)) if domain == "bit" else value
    return cls(**kwargs)


@pytest.mark.parametrize("cls", sorted(METHODS.values(), key=lambda c: c.INDEX),
                         ids=lambda c: c.NAME)
def test_every_method_round_trips_with_non_default_values(cls: type[spec.Method]) -> None:
    method = _non_default(cls)
    data = method.encode()
    decoded, end = cls.decode(data, 0)
    assert end == len(data)
    assert decoded == method
    assert type(decoded) is cls
    if cls.FIELDS:
        assert data != cls().encode()
    # Through a whole frame and back, at an offset as the engine decodes it.
    frame = encode_method(7, method)
    assert frame[:3] == b"\x01\x00\x07"
    assert frame[-1] == 0xCE
    payload = frame[7:-1]
    assert struct.unpack(">HH", payload[:4]) == (cls.CLASS_ID, cls.METHOD_ID)
    assert METHODS[struct.unpack(">I", payload[:4])[0]] is cls
    assert cls.decode(payload, 4) == (method, len(payload))


def test_method_table_is_complete() -> None:
    names = {cls.NAME for cls in METHODS.values()}
    assert len(METHODS) == 64  # 0-9-1 plus RabbitMQ extensions
    for name in ("connection.update-secret-ok", "exchange.unbind-ok", "basic.nack",
                 "confirm.select-ok", "connection.blocked"):
        assert name in names
    assert METHODS[(40 << 16) | 51] is spec.Exchange.UnbindOk
    for cls in METHODS.values():
        assert cls.INDEX == (cls.CLASS_ID << 16) | cls.METHOD_ID
        assert all(resp in METHODS.values() for resp in cls.RESPONSES)


def _strategy(domain: str) -> st.SearchStrategy[Any]:
    return {
        "octet": st.integers(0, 255),
        "short": st.integers(0, 2**16 - 1),
        "long": st.integers(0, 2**32 - 1),
        "longlong": st.integers(0, 2**64 - 1),
        "timestamp": st.integers(0, 2**64 - 1),
        "bit": st.booleans(),
        "shortstr": short_strings,
        "longstr": st.binary(max_size=64),
        "table": tables,
    }[domain]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_methods_round_trip_property(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(sorted(METHODS.values(), key=lambda c: c.INDEX)))
    method = cls(**{name: data.draw(_strategy(domain), label=name)
                    for name, domain in cls.FIELDS})
    wire = method.encode()
    decoded, end = cls.decode(wire, 0)
    assert end == len(wire)
    assert decoded == method
    assert decoded.encode() == wire


# --------------------------------------------------------------------------- properties

ALL_PROPERTIES = BasicProperties(
    content_type="application/json",
    content_encoding="gzip",
    headers={"x-retry": 3, "trace": {"id": b"\x01\x02"}, "tags": ["a", Int16(-2)]},
    delivery_mode=2,
    priority=9,
    correlation_id="corr-\u00e9",
    reply_to="amq.rabbitmq.reply-to",
    expiration="60000",
    message_id="msg-1",
    timestamp=1_700_000_000,
    type="order.created",
    user_id="guest",
    app_id="billing",
    cluster_id="c1",
)


def test_there_are_fourteen_properties_in_flag_order() -> None:
    assert len(PROPERTIES) == 14
    assert [name for name, _ in PROPERTIES][:3] == ["content_type", "content_encoding",
                                                    "headers"]


def test_all_fourteen_properties_round_trip() -> None:
    data = encode_properties(ALL_PROPERTIES)
    assert data[:2] == b"\xff\xfc"  # 14 flags, continuation bit clear
    decoded, end = decode_properties(data, 0)
    assert end == len(data)
    assert decoded == ALL_PROPERTIES
    assert encode_properties(decoded) == data


@pytest.mark.parametrize(("index", "name"), list(enumerate(n for n, _ in PROPERTIES)))
def test_each_property_alone(index: int, name: str) -> None:
    props = BasicProperties(**{name: getattr(ALL_PROPERTIES, name)})
    data = encode_properties(props)
    assert int.from_bytes(data[:2], "big") == 1 << (15 - index)
    decoded, end = decode_properties(data, 0)
    assert end == len(data)
    assert decoded == props
    for other, _ in PROPERTIES:
        if other != name:
            assert getattr(decoded, other) is None


def test_no_properties() -> None:
    assert encode_properties(None) == encode_properties(BasicProperties()) == b"\x00\x00"
    assert decode_properties(b"\x00\x00", 0) == (BasicProperties(), 2)


property_values = st.builds(
    BasicProperties,
    content_type=st.none() | short_strings,
    content_encoding=st.none() | short_strings,
    headers=st.none() | tables,
    delivery_mode=st.none() | st.integers(0, 255),
    priority=st.none() | st.integers(0, 255),
    correlation_id=st.none() | short_strings,
    reply_to=st.none() | short_strings,
    expiration=st.none() | short_strings,
    message_id=st.none() | short_strings,
    timestamp=st.none() | st.integers(0, 2**64 - 1),
    type=st.none() | short_strings,
    user_id=st.none() | short_strings,
    app_id=st.none() | short_strings,
    cluster_id=st.none() | short_strings,
)


@settings(max_examples=300, deadline=None)
@given(property_values)
def test_properties_round_trip_property(props: BasicProperties) -> None:
    data = encode_properties(props)
    decoded, end = decode_properties(data + b"trailing", 0)
    assert end == len(data)
    assert decoded == props
    assert encode_properties(decoded) == data


# --------------------------------------------------------------------------- field tables


def _table_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    body = b"".join(bytes((len(k.encode()),)) + k.encode() + v for k, v in entries)
    return struct.pack(">I", len(body)) + body


_TS = datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)

# tag -> (wire value after the tag, decoded value, decoded type)
TAG_CASES: dict[str, tuple[bytes, Any, type]] = {
    "t": (b"\x01", True, bool),
    "b": (struct.pack(">b", -7), -7, Int8),
    "B": (struct.pack(">B", 250), 250, UInt8),
    "s": (struct.pack(">h", -300), -300, Int16),
    "u": (struct.pack(">H", 65000), 65000, UInt16),
    "I": (struct.pack(">i", -70000), -70000, int),
    "i": (struct.pack(">I", 4_000_000_000), 4_000_000_000, UInt32),
    "l": (struct.pack(">q", -(2**40)), -(2**40), int),
    "f": (struct.pack(">f", 1.5), 1.5, Float32),
    "d": (struct.pack(">d", -2.25), -2.25, float),
    "D": (struct.pack(">Bi", 2, 12345), Decimal("123.45"), Decimal),
    "S": (struct.pack(">I", 5) + "h\u00e9\u00e9".encode()[:5], "h\u00e9\u00e9"[:3], str),
    "A": (struct.pack(">I", 8) + b"I" + struct.pack(">i", 1) + b"V" + b"t\x00",
          [1, None, False], list),
    "T": (struct.pack(">Q", 1_700_000_000), _TS, datetime.datetime),
    "F": (_table_bytes([("k", b"S" + struct.pack(">I", 1) + b"v")]), {"k": "v"}, dict),
    "V": (b"", None, type(None)),
    "x": (struct.pack(">I", 3) + b"\x00\xff\x10", b"\x00\xff\x10", bytes),
}


def test_every_tag_rabbitmq_uses_is_covered() -> None:
    assert set(TAG_CASES) == set("tbBsuIilfdDSATFVx")


@pytest.mark.parametrize("tag", sorted(TAG_CASES))
def test_each_tag_round_trips_exactly(tag: str) -> None:
    raw, value, kind = TAG_CASES[tag]
    wire = _table_bytes([("key", tag.encode() + raw)])
    table = decode_table(wire)
    assert table == {"key": value}
    assert type(table["key"]) is kind
    assert encode_table(table) == wire  # decode -> encode gives the same bytes
    assert _same(decode_table(encode_table(table)), table)  # the typed value round trips
    array = _arr([tag.encode() + raw])
    assert decode_array(array) == [value]
    assert encode_array(decode_array(array)) == array


def _arr(items: list[bytes]) -> bytes:
    body = b"".join(items)
    return struct.pack(">I", len(body)) + body


def test_non_utf8_long_string_stays_a_long_string() -> None:
    wire = _table_bytes([("k", b"S" + struct.pack(">I", 2) + b"\xff\xfe")])
    table = decode_table(wire)
    assert table == {"k": b"\xff\xfe"}
    assert type(table["k"]) is LongStrBytes
    assert encode_table(table) == wire


def test_small_long_long_keeps_its_tag() -> None:
    wire = _table_bytes([("k", b"l" + struct.pack(">q", 5))])
    assert encode_table(decode_table(wire)) == wire


def test_plain_python_values_pick_rabbitmq_tags() -> None:
    assert encode_table({"a": 1}) == _table_bytes([("a", b"I" + struct.pack(">i", 1))])
    assert encode_table({"a": 2**40}) == _table_bytes([("a", b"l" + struct.pack(">q", 2**40))])
    assert encode_table({"a": True}) == _table_bytes([("a", b"t\x01")])
    assert encode_table({"a": 0.5}) == _table_bytes([("a", b"d" + struct.pack(">d", 0.5))])
    assert encode_table({"a": b"\x01"}) == _table_bytes([("a", b"x\x00\x00\x00\x01\x01")])
    assert encode_table({"a": "\u00e9"}) == _table_bytes([("a", b"S\x00\x00\x00\x02\xc3\xa9")])
    assert encode_table(None) == encode_table({}) == b"\x00\x00\x00\x00"
    with pytest.raises(ValueError):
        encode_table({"a": 2**63})
    with pytest.raises(ValueError):
        encode_table({"k" * 256: 1})
    with pytest.raises(TypeError):
        encode_table({"a": object()})


@settings(max_examples=300, deadline=None)
@given(tables)
def test_tables_round_trip_property(table: dict[str, Any]) -> None:
    wire = encode_table(table)
    decoded = decode_table(wire)
    expected = _normalised(table)
    assert _same(decoded, expected)
    assert encode_table(decoded) == wire


def _normalised(value: Any) -> Any:
    """What decoding gives back for a value encoded from Python."""
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


# Wire values per tag, RabbitMQ's meaning, as a peer would send them.
def _wire_value(depth: int = 0) -> st.SearchStrategy[bytes]:
    fixed = st.one_of(
        st.sampled_from([b"t\x00", b"t\x01"]),
        st.binary(min_size=1, max_size=1).map(lambda b: b"b" + b),
        st.binary(min_size=1, max_size=1).map(lambda b: b"B" + b),
        st.binary(min_size=2, max_size=2).map(lambda b: b"s" + b),
        st.binary(min_size=2, max_size=2).map(lambda b: b"u" + b),
        st.binary(min_size=4, max_size=4).map(lambda b: b"I" + b),
        st.binary(min_size=4, max_size=4).map(lambda b: b"i" + b),
        st.binary(min_size=8, max_size=8).map(lambda b: b"l" + b),
        # Signalling float32 NaNs come back quieted by CPython: finite values, inf, qNaN.
        st.floats(width=32, allow_nan=False).map(lambda v: b"f" + struct.pack(">f", v)),
        st.binary(min_size=8, max_size=8).map(lambda b: b"d" + b),
        st.binary(min_size=5, max_size=5).map(lambda b: b"D" + b),
        st.binary(max_size=20).map(lambda b: b"S" + struct.pack(">I", len(b)) + b),
        st.binary(max_size=20).map(lambda b: b"x" + struct.pack(">I", len(b)) + b),
        st.integers(0, MAX_TIMESTAMP).map(lambda v: b"T" + struct.pack(">Q", v)),
        st.just(b"V"),
    )
    if depth >= 3:
        return fixed
    inner = _wire_value(depth + 1)
    return st.one_of(
        fixed,
        st.lists(inner, max_size=4).map(lambda items: b"A" + _arr(items)),
        st.dictionaries(keys, inner, max_size=4).map(
            lambda d: b"F" + _table_bytes(list(d.items()))),
    )


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(keys, _wire_value(), max_size=6))
def test_wire_tables_decode_then_encode_to_the_same_bytes(entries: dict[str, bytes]) -> None:
    wire = _table_bytes(list(entries.items()))
    assert encode_table(decode_table(wire)) == wire


def _nested(levels: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        table = {"d": table}
    return table


def test_depth_limit_is_the_same_both_ways() -> None:
    wire = encode_table(_nested(MAX_DEPTH))
    assert decode_table(wire) == _nested(MAX_DEPTH)
    with pytest.raises(ValueError):
        encode_table(_nested(MAX_DEPTH + 1))
    with pytest.raises(InvalidFieldError):
        decode_table(_table_bytes([("d", b"F" + wire)]))


# --------------------------------------------------------------------------- hot paths


@settings(max_examples=300, deadline=None)
@given(
    channel=st.integers(1, 65535),
    exchange=short_strings,
    routing_key=short_strings,
    body=st.binary(max_size=10_000),
    properties=st.none() | property_values,
    frame_max=st.integers(4096, 20_000),
    mandatory=st.booleans(),
    immediate=st.booleans(),
)
def test_fast_publish_matches_generic(channel: int, exchange: str, routing_key: str,
                                      body: bytes, properties: BasicProperties | None,
                                      frame_max: int, mandatory: bool,
                                      immediate: bool) -> None:
    generic = encode_content(channel, Basic.Publish(0, exchange, routing_key, mandatory,
                                                    immediate), properties, body, frame_max)
    fast = fast_publish(channel, exchange, routing_key, body, properties, frame_max,
                        mandatory, immediate)
    assert fast == generic


@settings(max_examples=300, deadline=None)
@given(channel=st.integers(0, 65535), tag=st.integers(0, 2**64 - 1), multiple=st.booleans())
def test_fast_ack_matches_generic(channel: int, tag: int, multiple: bool) -> None:
    assert encode_ack(channel, tag, multiple) == encode_method(channel, Basic.Ack(tag, multiple))


raw_short = st.binary(max_size=255)


@settings(max_examples=300, deadline=None)
@given(consumer_tag=raw_short, delivery_tag=st.integers(0, 2**64 - 1), bits=st.integers(0, 255),
       exchange=raw_short, routing_key=raw_short, extra=st.binary(max_size=4))
def test_fast_deliver_matches_generic(consumer_tag: bytes, delivery_tag: int, bits: int,
                                      exchange: bytes, routing_key: bytes, extra: bytes) -> None:
    # Built by hand so short strings may hold any bytes and the bit octet any value.
    payload = (struct.pack(">HH", 60, 60) + bytes((len(consumer_tag),)) + consumer_tag
               + struct.pack(">QB", delivery_tag, bits) + bytes((len(exchange),)) + exchange
               + bytes((len(routing_key),)) + routing_key + extra)
    generic, _ = Basic.Deliver.decode(payload, 4)
    fast = decode_deliver(payload)
    assert fast == generic
    assert fast.redelivered is bool(bits & 1)
    assert fast.consumer_tag.encode("utf-8", "surrogateescape") == consumer_tag


@settings(max_examples=200, deadline=None)
@given(consumer_tag=short_strings, delivery_tag=st.integers(0, 2**64 - 1),
       redelivered=st.booleans(), exchange=short_strings, routing_key=short_strings)
def test_fast_deliver_rejects_truncation_like_generic(consumer_tag: str, delivery_tag: int,
                                                       redelivered: bool, exchange: str,
                                                       routing_key: str) -> None:
    payload = method_payload(Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange,
                                           routing_key))
    assert decode_deliver(payload) == Basic.Deliver.decode(payload, 4)[0]
    for cut in range(4, len(payload)):
        with pytest.raises((struct.error, IndexError, InvalidFieldError)):
            Basic.Deliver.decode(payload[:cut], 4)
        with pytest.raises((struct.error, IndexError, InvalidFieldError)):
            decode_deliver(payload[:cut])
