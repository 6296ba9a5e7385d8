"""Field values, tables and arrays: AMQP 0-9-1 section 4.2.5, as RabbitMQ speaks it.

RabbitMQ's type tags differ from the 0-9-1 spec's (see the errata at
rabbitmq.com/amqp-0-9-1-errata): ``s`` is a *signed* 16-bit int, ``u`` an
unsigned 16-bit int, ``l`` a signed 64-bit int, ``x`` a byte array. Those are
the tags used here, in both directions.

Rules:
- Decoding never trusts a length: every read is bounds-checked against the
  buffer before it happens, and anything malformed raises `InvalidFieldError`
  (reply code 502) — never `struct.error`, `IndexError` or a huge allocation.
- Tables and arrays nest at most `MAX_DEPTH` levels.
- Values decode to plain Python types; where a tag's width or signedness would
  be lost, the value is a subclass of int / float / bytes that remembers its
  tag, so decoding and re-encoding gives back the same bytes.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from ..exceptions import InvalidFieldError

__all__ = [
    "MAX_DEPTH",
    "Float32",
    "Int8",
    "Int16",
    "Int64",
    "LongStrBytes",
    "UInt8",
    "UInt16",
    "UInt32",
    "decode_array",
    "decode_table",
    "decode_table_at",
    "encode_array",
    "encode_table",
    "encode_table_into",
]

MAX_DEPTH = 32

_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)


class Int8(int):
    """A table value tagged ``b`` (signed 8-bit)."""


class UInt8(int):
    """A table value tagged ``B`` (unsigned 8-bit)."""


class Int16(int):
    """A table value tagged ``s`` (signed 16-bit, RabbitMQ's meaning)."""


class UInt16(int):
    """A table value tagged ``u`` (unsigned 16-bit)."""


class Int64(int):
    """A table value tagged ``l`` (signed 64-bit), kept as ``l`` even when it is small."""


class UInt32(int):
    """A table value tagged ``i`` (unsigned 32-bit)."""


class Float32(float):
    """A table value tagged ``f`` (single precision)."""


class LongStrBytes(bytes):
    """A ``S`` long string whose bytes are not UTF-8; re-encodes as ``S``, not ``x``."""


_B = struct.Struct(">b")
_BU = struct.Struct(">B")
_S = struct.Struct(">h")
_SU = struct.Struct(">H")
_I = struct.Struct(">i")
_IU = struct.Struct(">I")
_L = struct.Struct(">q")
_LU = struct.Struct(">Q")
_F = struct.Struct(">f")
_D = struct.Struct(">d")
_DEC = struct.Struct(">Bi")

# --------------------------------------------------------------------------- decoding

_Decoder = Callable[[bytes, int, int], "tuple[Any, int]"]


def _need(buf: bytes, end: int, what: str) -> None:
    if end > len(buf):
        raise InvalidFieldError(f"truncated {what}: needs {end} bytes, has {len(buf)}")


def _fixed(st: struct.Struct, wrap: Callable[[Any], Any] | None) -> _Decoder:
    size = st.size
    unpack = st.unpack_from

    def decode(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
        _need(buf, pos + size, "field value")
        value = unpack(buf, pos)[0]
        return (wrap(value) if wrap else value), pos + size

    return decode


def _decode_bool(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    _need(buf, pos + 1, "boolean")
    return buf[pos] != 0, pos + 1


def _decode_longstr_raw(buf: bytes, pos: int) -> tuple[bytes, int]:
    _need(buf, pos + 4, "long string length")
    (length,) = _IU.unpack_from(buf, pos)
    end = pos + 4 + length
    _need(buf, end, "long string")
    return bytes(buf[pos + 4 : end]), end


def _decode_longstr(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    raw, pos = _decode_longstr_raw(buf, pos)
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError:
        return LongStrBytes(raw), pos


def _decode_bytes(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    return _decode_longstr_raw(buf, pos)


def _decode_decimal(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    _need(buf, pos + 5, "decimal")
    scale, value = _DEC.unpack_from(buf, pos)
    # Built from its parts, not by arithmetic (scaleb rounds to the thread's
    # decimal context precision): exact whatever context the caller set.
    digits = tuple(map(int, str(abs(value))))
    return Decimal((1 if value < 0 else 0, digits, -scale)), pos + 5


def _decode_timestamp(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    _need(buf, pos + 8, "timestamp")
    (seconds,) = _LU.unpack_from(buf, pos)
    try:
        return _EPOCH + datetime.timedelta(seconds=seconds), pos + 8
    except OverflowError:
        raise InvalidFieldError(f"timestamp {seconds} is out of range") from None


def _decode_void(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    return None, pos


def _decode_nested_table(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    return decode_table_at(buf, pos, depth + 1)


def _decode_nested_array(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    return _decode_array_at(buf, pos, depth + 1)


def _long(value: int) -> int:
    # A plain int re-encodes as 'I' when it fits 32 bits: only then is the tag kept.
    return Int64(value) if -0x80000000 <= value <= 0x7FFFFFFF else value


_DECODERS: dict[int, _Decoder] = {
    ord("t"): _decode_bool,
    ord("b"): _fixed(_B, Int8),
    ord("B"): _fixed(_BU, UInt8),
    ord("s"): _fixed(_S, Int16),
    ord("u"): _fixed(_SU, UInt16),
    ord("I"): _fixed(_I, None),
    ord("i"): _fixed(_IU, UInt32),
    ord("l"): _fixed(_L, _long),
    ord("f"): _fixed(_F, Float32),
    ord("d"): _fixed(_D, None),
    ord("D"): _decode_decimal,
    ord("S"): _decode_longstr,
    ord("x"): _decode_bytes,
    ord("T"): _decode_timestamp,
    ord("V"): _decode_void,
    ord("F"): _decode_nested_table,
    ord("A"): _decode_nested_array,
}


_TAG_S, _TAG_I, _TAG_T = ord("S"), ord("I"), ord("t")


def _decode_value(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    _need(buf, pos + 1, "field type tag")
    tag = buf[pos]
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise InvalidFieldError(f"unknown field type tag {tag!r} ({chr(tag)!r})")
    return decoder(buf, pos + 1, depth)


def decode_table_at(buf: bytes, pos: int, depth: int = 1) -> tuple[dict[str, Any], int]:
    """Decode the field table starting at `pos`; returns it and the offset after it."""
    if depth > MAX_DEPTH:
        raise InvalidFieldError(f"tables nested deeper than {MAX_DEPTH} levels")
    size = len(buf)
    if pos + 4 > size:
        _need(buf, pos + 4, "table length")
    end = pos + 4 + _IU.unpack_from(buf, pos)[0]
    if end > size:
        _need(buf, end, "table")
    pos += 4
    table: dict[str, Any] = {}
    while pos < end:
        key_end = pos + 1 + buf[pos]
        if key_end >= end:
            raise InvalidFieldError("table key runs past the end of its table")
        try:
            key = str(buf[pos + 1 : key_end], "utf-8")
        except UnicodeDecodeError:
            raise InvalidFieldError("table key is not UTF-8") from None
        # The commonest tags inline (headers are mostly strings and ints), each
        # read bounded by the table's end; the rest through _DECODERS.
        tag = buf[key_end]
        pos = key_end + 1
        if tag == _TAG_S and pos + 4 <= end:
            value_end = pos + 4 + _IU.unpack_from(buf, pos)[0]
            if value_end > end:
                raise InvalidFieldError(f"value of {key!r} runs past the end of its table")
            raw = buf[pos + 4 : value_end]
            try:
                table[key] = str(raw, "utf-8")
            except UnicodeDecodeError:
                table[key] = LongStrBytes(raw)
            pos = value_end
        elif tag == _TAG_I and pos + 4 <= end:
            table[key] = _I.unpack_from(buf, pos)[0]
            pos += 4
        elif tag == _TAG_T and pos < end:
            table[key] = buf[pos] != 0
            pos += 1
        else:
            table[key], pos = _decode_value(buf, key_end, depth)
            if pos > end:
                raise InvalidFieldError(f"value of {key!r} runs past the end of its table")
    return table, pos


def _decode_array_at(buf: bytes, pos: int, depth: int) -> tuple[list[Any], int]:
    if depth > MAX_DEPTH:
        raise InvalidFieldError(f"arrays nested deeper than {MAX_DEPTH} levels")
    _need(buf, pos + 4, "array length")
    (length,) = _IU.unpack_from(buf, pos)
    pos += 4
    end = pos + length
    _need(buf, end, "array")
    items: list[Any] = []
    while pos < end:
        value, pos = _decode_value(buf, pos, depth)
        items.append(value)
    if pos > end:
        raise InvalidFieldError("array item runs past the end of its array")
    return items, pos


def decode_table(data: bytes) -> dict[str, Any]:
    """Decode one complete encoded table (length prefix included)."""
    table, end = decode_table_at(data, 0)
    if end != len(data):
        raise InvalidFieldError(f"{len(data) - end} stray bytes after the table")
    return table


def decode_array(data: bytes) -> list[Any]:
    """Decode one complete encoded array (length prefix included)."""
    items, end = _decode_array_at(data, 0, 1)
    if end != len(data):
        raise InvalidFieldError(f"{len(data) - end} stray bytes after the array")
    return items


# --------------------------------------------------------------------------- encoding
#
# Everything is appended to one bytearray; a table's or array's length prefix
# is written in place once its items are (no per-item lists, joins or sums).

_TAGGED_INTS: dict[type, tuple[bytes, struct.Struct]] = {
    Int8: (b"b", _B),
    UInt8: (b"B", _BU),
    Int16: (b"s", _S),
    UInt16: (b"u", _SU),
    UInt32: (b"i", _IU),
    Int64: (b"l", _L),
}
_NO_LENGTH = b"\x00\x00\x00\x00"
_TAGGED_LEN = struct.Struct(">BI")  # a tag and a long string's length
_TAGGED_I = struct.Struct(">Bi")


def _encode_value(value: Any, out: bytearray, depth: int) -> None:
    kind = type(value)
    if kind is str:
        raw = value.encode("utf-8")
        out += b"S"
        out += _IU.pack(len(raw))
        out += raw
    elif kind is bool:
        out += b"t\x01" if value else b"t\x00"
    elif kind is int:
        if -0x80000000 <= value <= 0x7FFFFFFF:
            out += b"I"
            out += _I.pack(value)
        elif -0x8000000000000000 <= value <= 0x7FFFFFFFFFFFFFFF:
            out += b"l"
            out += _L.pack(value)
        else:
            raise ValueError(f"integer {value} does not fit a signed 64-bit table value")
    elif kind in _TAGGED_INTS:
        tag, st = _TAGGED_INTS[kind]
        try:
            packed = st.pack(value)
        except struct.error:
            raise ValueError(f"{value} does not fit a {kind.__name__}") from None
        out += tag
        out += packed
    elif kind is float:
        out += b"d"
        out += _D.pack(value)
    elif kind is Float32:
        out += b"f"
        out += _F.pack(value)
    elif kind is dict:
        out += b"F"
        encode_table_into(value, out, depth + 1)
    elif kind is list or kind is tuple:
        out += b"A"
        _encode_array_into(value, out, depth + 1)
    elif kind is bytes or kind is bytearray or kind is memoryview:
        out += b"x"
        out += _IU.pack(len(value) if kind is not memoryview else value.nbytes)
        out += value
    elif kind is LongStrBytes:
        out += b"S"
        out += _IU.pack(len(value))
        out += value
    elif value is None:
        out += b"V"
    elif isinstance(value, Decimal):
        out += b"D"
        out += _encode_decimal(value)
    elif isinstance(value, datetime.datetime):
        out += b"T"
        out += _LU.pack(_timestamp_seconds(value))
    elif isinstance(value, (dict, list, tuple, str, int, float, bytes)):
        # Subclasses of the plain types (e.g. an IntEnum, an OrderedDict).
        _encode_value(_plain(value), out, depth)
    else:
        raise TypeError(f"cannot encode a {kind.__name__} in an AMQP field table")


def _plain(value: Any) -> Any:
    bases: tuple[Any, ...] = (bool, int, float, str, bytes, dict, list, tuple)
    for base in bases:
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"cannot encode a {type(value).__name__}")  # pragma: no cover


def _encode_decimal(value: Decimal) -> bytes:
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"decimal {value} is not finite")
    scale = -exponent if exponent < 0 else 0
    unscaled = int("".join(map(str, digits)) or "0") * (10**exponent if exponent > 0 else 1)
    if sign:
        unscaled = -unscaled
    if scale > 255 or not -0x80000000 <= unscaled <= 0x7FFFFFFF:
        raise ValueError(f"decimal {value} does not fit AMQP's scale octet + int32")
    return _DEC.pack(scale, unscaled)


def _timestamp_seconds(value: datetime.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    seconds = (value - _EPOCH) // datetime.timedelta(seconds=1)
    if seconds < 0:
        raise ValueError(f"timestamp {value} is before 1970")
    return int(seconds)


_KEY_CACHE: dict[str, bytes] = {}  # key -> its length octet and UTF-8 bytes
_KEY_CACHE_MAX = 4096


def _encoded_key(key: str) -> bytes:
    raw_key = key.encode("utf-8")
    if len(raw_key) > 255:
        raise ValueError(f"table key {key[:40]!r}... is longer than 255 bytes")
    encoded = _BU.pack(len(raw_key)) + raw_key
    if len(_KEY_CACHE) < _KEY_CACHE_MAX and type(key) is str:
        _KEY_CACHE[key] = encoded
    return encoded


def encode_table_into(table: dict[str, Any], out: bytearray, depth: int = 1) -> None:
    """Append `table`, length prefix included, to `out` (``{}`` as an empty table)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"tables nested deeper than {MAX_DEPTH} levels")
    start = len(out)
    out += _NO_LENGTH
    keys = _KEY_CACHE
    for key, value in table.items():
        encoded_key = keys.get(key)
        out += _encoded_key(key) if encoded_key is None else encoded_key
        # The commonest types inline; everything else through _encode_value.
        kind = type(value)
        if kind is str:
            raw = value.encode("utf-8")
            out += _TAGGED_LEN.pack(_TAG_S, len(raw))
            out += raw
        elif kind is int and -0x80000000 <= value <= 0x7FFFFFFF:
            out += _TAGGED_I.pack(_TAG_I, value)
        else:
            _encode_value(value, out, depth)
    _IU.pack_into(out, start, len(out) - start - 4)


def _encode_array_into(items: list[Any] | tuple[Any, ...], out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"arrays nested deeper than {MAX_DEPTH} levels")
    start = len(out)
    out += _NO_LENGTH
    for value in items:
        _encode_value(value, out, depth)
    _IU.pack_into(out, start, len(out) - start - 4)


def encode_table(table: dict[str, Any] | None) -> bytes:
    """Encode a table, length prefix included. ``None`` encodes as an empty table."""
    if not table:
        return _NO_LENGTH
    out = bytearray()
    encode_table_into(table, out)
    return bytes(out)


def encode_array(items: list[Any] | tuple[Any, ...]) -> bytes:
    """Encode an array, length prefix included."""
    out = bytearray()
    _encode_array_into(items, out, 1)
    return bytes(out)
