"""Derive fast encoders and decoders from the method table's annotations.

For every method class the field list is turned into straight-line Python
source — runs of fixed-width fields become one `struct` call, consecutive bits
share an octet (spec 4.2.5.2) — compiled once at import. This is the generic
path; `frames.py` keeps hand-tuned fast paths for publish / deliver / ack,
and the tests check both against each other.

Decoders do not check bounds field by field: a short buffer makes `struct`
raise, a short string slice comes back short, and the final offset check
catches it. Callers turn `struct.error`, `IndexError` and `UnicodeDecodeError`
into `InvalidFieldError` in one place (`decode_method`).
"""

from __future__ import annotations

import struct
from typing import Any

from ..exceptions import InvalidFieldError
from .fields import decode_table_at, encode_table

# Annotation alias in spec.py -> AMQP domain.
_ALIASES = {
    "Octet": "octet",
    "Short": "short",
    "Long": "long",
    "LongLong": "longlong",
    "Bit": "bit",
    "ShortStr": "shortstr",
    "LongStr": "longstr",
    "Timestamp": "timestamp",
    "Table": "table",
}
_STRUCT_CODES = {"octet": "B", "short": "H", "long": "I", "longlong": "Q", "timestamp": "Q"}


def fields_of(cls: type) -> tuple[tuple[str, str], ...]:
    """(name, domain) for each dataclass field of `cls`, in declaration order."""
    out = []
    for f in cls.__dataclass_fields__.values():  # type: ignore[attr-defined]
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        out.append((f.name, _ALIASES[annotation]))
    return tuple(out)


def _groups(fields: tuple[tuple[str, str], ...]) -> list[tuple[str, list[str]]]:
    """Split fields into runs: ("struct", names), ("bits", names) or (domain, [name])."""
    groups: list[tuple[str, list[str]]] = []
    for name, domain in fields:
        kind = "struct" if domain in _STRUCT_CODES else domain
        if kind in ("struct", "bit") and groups and groups[-1][0] == kind:
            groups[-1][1].append(name)
        else:
            groups.append((kind, [name]))
    return groups


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "decode_table_at": decode_table_at,
            "encode_table": encode_table,
            "pack_shortstr": pack_shortstr,
            "pack_longstr": pack_longstr,
            "InvalidFieldError": InvalidFieldError,
        }
        self.counter = 0

    def struct(self, fmt: str) -> str:
        self.counter += 1
        name = f"_S{self.counter}"
        self.namespace[name] = struct.Struct(">" + fmt)
        return name

    def add(self, line: str) -> None:
        self.lines.append(line)

    def compile(self, fname: str) -> Any:
        exec("\n".join(self.lines), self.namespace)
        return self.namespace[fname]


def pack_shortstr(value: str, field_name: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) > 255:
        raise ValueError(f"{field_name} is {len(raw)} bytes long; a short string holds 255")
    return bytes((len(raw),)) + raw


def pack_longstr(value: bytes | str) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return len(raw).to_bytes(4, "big") + raw


def make_decoder(fields: tuple[tuple[str, str], ...], build: Any) -> Any:
    """A function (buf, pos) -> (build(*values), end) for this field layout."""
    src = _Source()
    src.namespace["build"] = build
    src.add("def decode(buf, pos):")
    names: list[str] = []
    domains = dict(fields)
    for kind, group in _groups(fields):
        names.extend(group)
        if kind == "struct":
            fmt = "".join(_STRUCT_CODES[domains[n]] for n in group)
            st = src.struct(fmt)
            targets = ", ".join(group) + ","
            src.add(f"    {targets} = {st}.unpack_from(buf, pos)")
            src.add(f"    pos += {struct.calcsize('>' + fmt)}")
        elif kind == "bit":
            src.add("    octet = buf[pos]; pos += 1")
            for i, n in enumerate(group):
                src.add(f"    {n} = (octet & {1 << i}) != 0")
        elif kind == "shortstr":
            n = group[0]
            src.add("    end = pos + 1 + buf[pos]")
            src.add(f"    {n} = bytes(buf[pos + 1:end]).decode('utf-8', 'surrogateescape')")
            src.add("    pos = end")
        elif kind == "longstr":
            n = group[0]
            src.add("    end = pos + 4 + int.from_bytes(buf[pos:pos + 4], 'big')")
            src.add(f"    {n} = bytes(buf[pos + 4:end])")
            src.add("    pos = end")
        elif kind == "table":
            src.add(f"    {group[0]}, pos = decode_table_at(buf, pos)")
    src.add("    if pos > len(buf):")
    src.add("        raise InvalidFieldError('method arguments truncated')")
    src.add(f"    return build({', '.join(names)}), pos")
    return src.compile("decode")


def make_encoder(fields: tuple[tuple[str, str], ...]) -> Any:
    """A function (obj) -> bytes of obj's fields in wire order."""
    src = _Source()
    src.add("def encode(self):")
    parts: list[str] = []
    domains = dict(fields)
    for kind, group in _groups(fields):
        if kind == "struct":
            fmt = "".join(_STRUCT_CODES[domains[n]] for n in group)
            st = src.struct(fmt)
            parts.append(f"{st}.pack({', '.join('self.' + n for n in group)})")
        elif kind == "bit":
            bits = " | ".join(f"({1 << i} if self.{n} else 0)" for i, n in enumerate(group))
            parts.append(f"bytes(({bits},))")
        elif kind == "shortstr":
            parts.append(f"pack_shortstr(self.{group[0]}, {group[0]!r})")
        elif kind == "longstr":
            parts.append(f"pack_longstr(self.{group[0]})")
        elif kind == "table":
            parts.append(f"encode_table(self.{group[0]})")
    src.add(f"    return b''.join(({', '.join(parts)},))" if parts else "    return b''")
    return src.compile("encode")


def install(cls: Any) -> None:
    """Give a method class its generated `encode` and `decode`."""
    cls.encode = make_encoder(cls.FIELDS)
    cls.decode = staticmethod(make_decoder(cls.FIELDS, cls))
