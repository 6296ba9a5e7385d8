"""Differential tests: geamqp's codec against pamqp's, an independent implementation.

For every method of `spec.METHODS`, for the basic properties of a content
header and for field tables / arrays, hypothesis generates values and checks
both directions: bytes geamqp encodes decode to the same values in pamqp, and
bytes pamqp encodes decode to the same values in geamqp. Where both codecs
have a single canonical encoding (every method whose tables are empty) the
bytes must also be identical. Method fields are paired by *position*, never by
name (pamqp says ``global_`` and ``exchange_type`` where geamqp says
``global_qos`` and ``type``), and the domains of each pair must agree.

Intentional differences — values the test does not generate, or normalises:

1. ``longlong`` (delivery tags): AMQP says unsigned 64-bit; pamqp packs and
   unpacks it signed (``>q``). Values are limited to 0 .. 2**63-1.
2. ``longstr`` method arguments: geamqp holds bytes; pamqp holds str (and
   decodes to bytes only when the bytes are not UTF-8). geamqp-encoded values
   may be any bytes; pamqp-encoded ones are UTF-8 text.
3. pamqp's ``validate()`` enforces policy, not encoding (ticket must be 0,
   name regexes, delivery_mode 1 or 2, cluster_id empty, out_of_band "0"...).
   pamqp objects are built with validation switched off so every encodable
   value is compared.
4. Basic properties: pamqp cannot tell an empty short string from an absent
   property (it omits "" when encoding), so "" compares equal to None;
   geamqp's ``timestamp`` is int seconds, pamqp's a datetime.
5. Timestamps (property and table ``T``) are limited to 0 .. 0xFFFFFFFF:
   pamqp reads anything larger as milliseconds, geamqp always as seconds.
6. Tables, pamqp side: pamqp encodes every float as ``f`` (single precision),
   so the floats it sends are float32-representable; geamqp sends ``d`` unless
   the value is a `Float32`. pamqp picks the narrowest integer tag
   (b/s/u/I/i/l) where geamqp uses I/l unless the value is a tagged int —
   values compare equal, tags are not compared. pamqp encodes only
   ``bytearray`` as ``x`` and sorts keys; it truncates keys longer than 128
   bytes, so keys stay within 128. NaN is not generated (NaN != NaN).
7. pamqp also *decodes* ``L`` (as signed 64-bit) and ``\\x00`` (as void);
   RabbitMQ sends neither and geamqp rejects both (pinned below).
"""

from __future__ import annotations

import datetime
import decimal
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import base as p_base
from pamqp import body as p_body
from pamqp import commands as p_commands
from pamqp import decode as p_decode
from pamqp import encode as p_encode
from pamqp import frame as p_frame
from pamqp import header as p_header

from geamqp.exceptions import InvalidFieldError
from geamqp.protocol import events as ev
from geamqp.protocol import frames, spec
from geamqp.protocol.connection import AMQPConnection, ClientSettings
from geamqp.protocol.fields import (
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
from geamqp.protocol.properties import PROPERTIES, BasicProperties, decode_properties
from geamqp.protocol.sasl import PlainCredentials

# pamqp warns when it builds a deprecated method (basic.recover-async) while decoding.
pytestmark = pytest.mark.filterwarnings("ignore:This command is deprecated:DeprecationWarning")

METHOD_CLASSES = sorted(spec.METHODS.values(), key=lambda c: c.INDEX)
FRAME_MAX = 4096  # small, so bodies split into several frames
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --------------------------------------------------------------------------- strategies

_INT_EDGES = st.sampled_from([
    -(2**63), -(2**31) - 1, -(2**31), -32769, -32768, -129, -128, -1, 0, 1, 127, 128, 255,
    256, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1,
])
_INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1), _INT_EDGES)
_KEYS = st.text(max_size=32)  # <= 128 UTF-8 bytes: pamqp truncates longer keys
_TIMESTAMPS = st.integers(0, 0xFFFFFFFF).map(lambda s: _EPOCH + datetime.timedelta(seconds=s))
_DECIMALS = st.one_of(
    st.builds(lambda m, s: Decimal(m).scaleb(-s), st.integers(-(2**31), 2**31 - 1),
              st.integers(0, 255)),
    st.builds(lambda m, e: Decimal(m).scaleb(e), st.integers(-21474, 21474), st.integers(1, 5)),
)

# Values geamqp encodes: its tagged subclasses choose the tag.
_G_LEAVES = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20).map(lambda b: LongStrBytes(b + b"\xff")),  # 'S', not UTF-8
    st.binary(max_size=20),  # 'x'
    st.booleans(),
    _INT64,
    st.integers(-128, 127).map(Int8),
    st.integers(0, 255).map(UInt8),
    st.integers(-32768, 32767).map(Int16),
    st.integers(0, 65535).map(UInt16),
    st.integers(0, 2**32 - 1).map(UInt32),
    st.floats(allow_nan=False),
    st.floats(width=32, allow_nan=False).map(Float32),
    _DECIMALS,
    _TIMESTAMPS,
    st.none(),
)
# Values pamqp encodes (see note 6).
_P_LEAVES = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20).map(bytearray),
    st.booleans(),
    _INT64,
    st.floats(width=32, allow_nan=False),
    _DECIMALS,
    _TIMESTAMPS,
    st.none(),
)


def _values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(_KEYS, inner, max_size=4)),
        max_leaves=10,
    )


G_TABLES = st.dictionaries(_KEYS, _values(_G_LEAVES), max_size=5)
P_TABLES = st.dictionaries(_KEYS, _values(_P_LEAVES), max_size=5)
G_ARRAYS = st.lists(_values(_G_LEAVES), max_size=5)
P_ARRAYS = st.lists(_values(_P_LEAVES), max_size=5)

SHORTSTR = st.one_of(
    st.text(max_size=63),  # at most 4 bytes a character: always fits 255
    st.text(alphabet="abcxyz.-_", min_size=250, max_size=255),
)
_G_DOMAINS: dict[str, st.SearchStrategy[Any]] = {
    "octet": st.integers(0, 255),
    "short": st.integers(0, 65535),
    "long": st.integers(0, 2**32 - 1),
    "longlong": st.integers(0, 2**63 - 1),  # note 1
    "bit": st.booleans(),
    "shortstr": SHORTSTR,
    "longstr": st.one_of(st.binary(max_size=64), st.text(max_size=20).map(str.encode)),
    "table": st.one_of(st.none(), G_TABLES),
}
_P_DOMAINS = {**_G_DOMAINS, "longstr": st.text(max_size=40), "table": P_TABLES}


def method_values(cls: type[spec.Method], domains: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({name: domains[domain] for name, domain in cls.FIELDS})


CHANNELS = st.integers(0, 65535)

# --------------------------------------------------------------------------- helpers


def _no_validation() -> None:
    """Stands in for pamqp's validate(): policy checks, not encoding (note 3)."""


def pamqp_class(cls: type[spec.Method]) -> type[p_base.Frame]:
    return p_commands.INDEX_MAPPING[cls.INDEX]


def field_pairs(cls: type[spec.Method]) -> list[tuple[str, str, str]]:
    """(geamqp name, pamqp name, domain) by wire position; the domains must agree."""
    p_cls = pamqp_class(cls)
    p_fields = [(name, p_cls.amqp_type(name)) for name in p_cls.__slots__]
    assert [d for _, d in p_fields] == [d for _, d in cls.FIELDS], cls.NAME
    return [(g, p, d) for (g, d), (p, _) in zip(cls.FIELDS, p_fields, strict=True)]


def build_pamqp(cls: type[spec.Method], values: dict[str, Any]) -> p_base.Frame:
    p_cls = pamqp_class(cls)
    obj = p_cls.__new__(p_cls)
    for g_name, p_name, _ in field_pairs(cls):
        setattr(obj, p_name, values[g_name])
    obj.validate = _no_validation  # type: ignore[method-assign]
    return obj


def to_geamqp(cls: type[spec.Method], values: dict[str, Any]) -> spec.Method:
    """The geamqp method holding pamqp-side values."""
    args = {name: (values[name].encode() if domain == "longstr" else values[name])
            for name, domain in cls.FIELDS}
    return cls(**args)


def norm(value: Any, side: str) -> Any:
    """A comparable form of a decoded table value that keeps its kind.

    ``side`` says whose decoder produced it: pamqp decodes ``x`` to bytearray
    and a non-UTF-8 ``S`` to bytes; geamqp decodes them to bytes and
    `LongStrBytes`.
    """
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", int(value))
    if isinstance(value, float):
        return ("float", struct.pack(">d", value))
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, (bytes, bytearray)):
        is_x = (type(value) is bytearray) if side == "pamqp" else (type(value) is not LongStrBytes)
        return ("x" if is_x else "S-bytes", bytes(value))
    if value is None:
        return ("void",)
    if isinstance(value, Decimal):
        return ("decimal", value)
    if isinstance(value, datetime.datetime):
        assert value.tzinfo is not None
        return ("timestamp", value)
    if isinstance(value, dict):
        return ("table", {k: norm(v, side) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return ("array", [norm(v, side) for v in value])
    raise AssertionError(f"unexpected decoded value {value!r}")


def assert_field_equal(domain: str, g_value: Any, p_value: Any, g_side: str, p_side: str) -> None:
    if domain == "table":
        assert norm(g_value or {}, g_side) == norm(p_value or {}, p_side)
    elif domain == "longstr":
        p_bytes = p_value.encode() if isinstance(p_value, str) else bytes(p_value)
        assert g_value == p_bytes
    elif domain == "bit":
        assert type(g_value) is bool and type(p_value) is bool and g_value == p_value
    elif domain == "shortstr":
        assert type(g_value) is str and g_value == p_value
    else:
        assert type(p_value) is int and type(g_value) is int and g_value == p_value


def pamqp_unmarshal_all(data: bytes) -> list[tuple[int, Any]]:
    out = []
    pos = 0
    while pos < len(data):
        consumed, channel, frame = p_frame.unmarshal(data[pos:])
        out.append((channel, frame))
        pos += consumed
    return out


def geamqp_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    reader = frames.FrameReader(131072)
    result = reader.feed(data)
    assert reader.error is None and reader.buffered == 0
    return result


# --------------------------------------------------------------------------- the method table


def test_method_table_matches_pamqp() -> None:
    assert set(spec.METHODS) == set(p_commands.INDEX_MAPPING)
    for cls in METHOD_CLASSES:
        p_cls = pamqp_class(cls)
        field_pairs(cls)  # asserts the domains line up
        assert p_cls.synchronous == cls.SYNCHRONOUS, cls.NAME
        responses = sorted(p_commands.INDEX_MAPPING[_pamqp_index(n)].index
                           for n in p_cls.valid_responses)
        assert sorted(r.INDEX for r in cls.RESPONSES) == responses, cls.NAME


def _pamqp_index(name: str) -> int:
    class_name, method_name = name.split(".")
    return int(getattr(getattr(p_commands, class_name), method_name).index)


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.NAME)
@FEW
@given(data=st.data(), channel=CHANNELS)
def test_method_geamqp_to_pamqp(cls: type[spec.Method], data: st.DataObject,
                                channel: int) -> None:
    values = data.draw(method_values(cls, _G_DOMAINS))
    method = cls(**values)
    wire = frames.encode_method(channel, method)
    consumed, p_channel, decoded = p_frame.unmarshal(wire)
    assert (consumed, p_channel, type(decoded)) == (len(wire), channel, pamqp_class(cls))
    for g_name, p_name, domain in field_pairs(cls):
        assert_field_equal(domain, values[g_name], getattr(decoded, p_name), "geamqp", "pamqp")
    if cls is spec.Basic.Ack:  # the hand-tuned encoder agrees with the generic one
        assert frames.encode_ack(channel, method.delivery_tag, method.multiple) == wire


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.NAME)
@FEW
@given(data=st.data(), channel=CHANNELS)
def test_method_pamqp_to_geamqp(cls: type[spec.Method], data: st.DataObject,
                                channel: int) -> None:
    values = data.draw(method_values(cls, _P_DOMAINS))
    wire = p_frame.marshal(build_pamqp(cls, values), channel)
    [(ftype, g_channel, payload)] = geamqp_frames(wire)
    assert (ftype, g_channel) == (frames.FRAME_METHOD, channel)
    assert struct.unpack_from(">HH", payload) == (cls.CLASS_ID, cls.METHOD_ID)
    decoded, end = cls.decode(payload, 4)
    assert end == len(payload)
    for name, domain in cls.FIELDS:
        assert_field_equal(domain, getattr(decoded, name), values[name], "geamqp", "pamqp")
    if cls is spec.Basic.Deliver:  # the hand-tuned decoder agrees with the generic one
        assert frames.decode_deliver(payload) == decoded
    # Canonical encodings: with no table entries both codecs give the same bytes.
    if not any(values[name] for name, domain in cls.FIELDS if domain == "table"):
        assert frames.encode_method(channel, to_geamqp(cls, values)) == wire


# --------------------------------------------------------------------------- field tables


@MANY
@given(table=G_TABLES)
def test_table_geamqp_to_pamqp(table: dict[str, Any]) -> None:
    wire = encode_table(table)
    consumed, decoded = p_decode.field_table(wire)
    assert consumed == len(wire)
    assert norm(decoded, "pamqp") == norm(table, "geamqp")


@MANY
@given(table=P_TABLES)
def test_table_pamqp_to_geamqp(table: dict[str, Any]) -> None:
    decoded = decode_table(p_encode.field_table(table))
    assert norm(decoded, "geamqp") == norm(table, "pamqp")
    # What geamqp decoded re-encodes to the very same bytes (tags are remembered).
    assert encode_table(decoded) == p_encode.field_table(table)


@MANY
@given(items=G_ARRAYS)
def test_array_geamqp_to_pamqp(items: list[Any]) -> None:
    wire = encode_array(items)
    consumed, decoded = p_decode.field_array(wire)
    assert consumed == len(wire)
    assert norm(decoded, "pamqp") == norm(items, "geamqp")


@MANY
@given(items=P_ARRAYS)
def test_array_pamqp_to_geamqp(items: list[Any]) -> None:
    wire = p_encode.field_array(items)
    assert norm(decode_array(wire), "geamqp") == norm(items, "pamqp")


@pytest.mark.parametrize("tag", [b"L", b"\x00"])
def test_tags_pamqp_accepts_and_rabbitmq_never_sends_are_rejected(tag: bytes) -> None:
    # Note 7: pamqp reads these; RabbitMQ neither sends nor accepts them.
    wire = b"\x00\x00\x00\x0b" + b"\x01k" + tag + b"\x00" * 8
    if tag == b"L":
        assert p_decode.field_table(wire)[1] == {"k": 0}
    with pytest.raises(InvalidFieldError):
        decode_table(wire)


@MANY
@given(value=_DECIMALS, precision=st.integers(1, 9))
def test_decimal_decoding_ignores_the_callers_decimal_context(value: Decimal,
                                                              precision: int) -> None:
    # Regression: decoding used Decimal.scaleb, which rounds to the current
    # context's precision, so a caller's localcontext(prec=4) corrupted values.
    wire = p_encode.field_table({"d": value})
    with decimal.localcontext() as ctx:
        ctx.prec = precision
        decoded = decode_table(wire)["d"]
    assert decoded == value
    assert encode_table({"d": decoded}) == wire


# --------------------------------------------------------------------------- basic properties

_G_PROPERTY_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "shortstr": SHORTSTR,
    "octet": st.integers(0, 255),
    "timestamp": st.integers(0, 0xFFFFFFFF),  # note 5
    "table": G_TABLES,
}
_P_PROPERTY_VALUES = {**_G_PROPERTY_VALUES, "table": P_TABLES,
                      "timestamp": _TIMESTAMPS}

G_PROPERTIES = st.fixed_dictionaries(
    {}, optional={name: _G_PROPERTY_VALUES[d] for name, d in PROPERTIES}
).map(lambda kw: BasicProperties(**kw))
P_PROPERTIES = st.fixed_dictionaries(
    {}, optional={name: _P_PROPERTY_VALUES[d] for name, d in PROPERTIES})
BODIES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([4087, 4088, 4089, 9000]).map(lambda n: bytes(i % 251 for i in range(n))),
)


def _pamqp_property_names() -> list[str]:
    p_cls = p_commands.Basic.Properties
    assert [p_cls.amqp_type(n) for n in p_cls.__slots__] == [d for _, d in PROPERTIES]
    assert [p_cls.flags[n] for n in p_cls.__slots__] == [1 << (15 - i) for i in range(14)]
    return list(p_cls.__slots__)


P_PROPERTY_NAMES = _pamqp_property_names()  # 'type' is pamqp's 'message_type'


def assert_properties_equal(g_props: BasicProperties, p_props: Any,
                            g_side: str = "geamqp", p_side: str = "pamqp") -> None:
    for (name, domain), p_name in zip(PROPERTIES, P_PROPERTY_NAMES, strict=True):
        g_value, p_value = getattr(g_props, name), getattr(p_props, p_name, None)
        if domain == "shortstr":  # note 4
            assert (g_value or None) == (p_value or None), name
        elif domain == "timestamp":
            if isinstance(p_value, datetime.datetime):
                p_value = (p_value - _EPOCH) // datetime.timedelta(seconds=1)
            assert g_value == p_value, name
        elif domain == "table":
            assert (g_value is None) == (p_value is None), name
            if g_value is not None:
                assert norm(g_value, g_side) == norm(p_value, p_side), name
        else:
            assert g_value == p_value, name


@MANY
@given(props=G_PROPERTIES, body=BODIES, exchange=SHORTSTR, routing_key=SHORTSTR,
       mandatory=st.booleans(), immediate=st.booleans(), channel=st.integers(1, 65535))
def test_publish_geamqp_to_pamqp(props: BasicProperties, body: bytes, exchange: str,
                                 routing_key: str, mandatory: bool, immediate: bool,
                                 channel: int) -> None:
    wire = frames.encode_publish(channel, exchange, routing_key, body, props, FRAME_MAX,
                                 mandatory, immediate)
    publish = spec.Basic.Publish(0, exchange, routing_key, mandatory, immediate)
    assert wire == frames.encode_content(channel, publish, props, body, FRAME_MAX)
    decoded = pamqp_unmarshal_all(wire)
    assert {ch for ch, _ in decoded} == {channel}
    (_, method), (_, header), *body_frames = decoded
    assert isinstance(method, p_commands.Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory, method.immediate) == (
        exchange, routing_key, mandatory, immediate)
    assert isinstance(header, p_header.ContentHeader)
    assert (header.class_id, header.weight, header.body_size) == (60, 0, len(body))
    assert_properties_equal(props, header.properties)
    assert all(isinstance(f, p_body.ContentBody) for _, f in body_frames)
    assert all(len(f.value) <= FRAME_MAX - 8 for _, f in body_frames)
    assert b"".join(f.value for _, f in body_frames) == body


def _pamqp_properties(values: dict[str, Any]) -> Any:
    p_cls = p_commands.Basic.Properties
    props = p_cls.__new__(p_cls)  # skips validate() (note 3)
    for name, p_name in zip((n for n, _ in PROPERTIES), P_PROPERTY_NAMES, strict=True):
        setattr(props, p_name, values.get(name))
    return props


def open_connection() -> tuple[AMQPConnection, int]:
    """An AMQPConnection scripted through the handshake by pamqp-encoded server frames."""
    conn = AMQPConnection(ClientSettings(PlainCredentials("guest", "guest"), frame_max=FRAME_MAX))
    conn.data_to_send()
    handshake = [
        p_commands.Connection.Start(server_properties={"product": "RabbitMQ"}),
        p_commands.Connection.Tune(channel_max=2047, frame_max=FRAME_MAX, heartbeat=0),
        p_commands.Connection.OpenOk(),
    ]
    events = conn.receive_data(b"".join(p_frame.marshal(m, 0) for m in handshake))
    assert isinstance(events[-1], ev.ConnectionOpened)
    channel = conn.open_channel()
    events = conn.receive_data(p_frame.marshal(p_commands.Channel.OpenOk(), channel))
    assert events == [ev.ChannelOpened(channel)]
    conn.data_to_send()
    return conn, channel


@MANY
@given(values=P_PROPERTIES, body=BODIES, deliver=method_values(spec.Basic.Deliver, _P_DOMAINS),
       chunk=st.integers(1, 5000))
def test_deliver_pamqp_to_geamqp(values: dict[str, Any], body: bytes, deliver: dict[str, Any],
                                 chunk: int) -> None:
    conn, channel = open_connection()
    p_props = _pamqp_properties(values)
    parts = [p_frame.marshal(build_pamqp(spec.Basic.Deliver, deliver), channel),
             p_frame.marshal(p_header.ContentHeader(0, len(body), p_props), channel)]
    step = FRAME_MAX - 8
    parts += [p_frame.marshal(p_body.ContentBody(body[i:i + step]), channel)
              for i in range(0, len(body), step)]
    wire = b"".join(parts)
    # The header payload alone, through the property decoder.
    [_, (_, _, header_payload), *_] = geamqp_frames(wire)
    props, end = decode_properties(header_payload, 12)
    assert end == len(header_payload)
    assert_properties_equal(props, p_props)
    # The whole stream, in arbitrary pieces, through the connection.
    events: list[ev.Event] = []
    for i in range(0, len(wire), chunk):
        events += conn.receive_data(wire[i:i + chunk])
    [content] = events
    assert isinstance(content, ev.ContentReceived)
    assert content.method == spec.Basic.Deliver(**deliver)
    assert content.body == body
    assert_properties_equal(content.properties, p_props)
