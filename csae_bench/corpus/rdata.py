"""A reader of R's lazy-load data (``data/Rdata.rdb``/``.rdx``), for sources shipped as an R
data package (``janeaustenr``)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

# R's lazy-load database (``data/Rdata.rdb``/``.rdx``): XDR serialization, version 2 or 3.
_R_NIL, _R_REF, _R_SYM, _R_LIST, _R_CHAR = 254, 255, 1, 2, 9
_R_SPECIAL = {253, 252, 251, 247, 242, 241}  # environments, missing arg, unbound value
_R_VECTORS = {10: "i", 13: "i", 14: "d", 16: None, 19: None, 20: None}


class _RReader:
    """A minimal reader of R's XDR serialization: the value types a data package's character
    vectors and index need (vectors, pairlists, symbols, strings, references)."""

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.data, self.pos, self.refs = data, 2, []
        version = self._int()
        self.pos += 8  # writer and minimal reader versions
        if version == 3:
            n = self._int()
            self.pos += n  # the native encoding's name

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def read(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == _R_NIL or kind in _R_SPECIAL:
            return None
        if kind == _R_REF:
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if kind == _R_SYM:
            name = self.read()
            self.refs.append(name)
            return name
        if kind == _R_LIST:
            if has_attr:
                self.read()
            tag = self.read() if has_tag else None
            head, tail = self.read(), self.read()
            return [(tag, head)] + (tail or [])
        if kind == _R_CHAR:
            n = self._int()
            if n == -1:
                return None
            text = self.data[self.pos : self.pos + n].decode("utf-8", errors="replace")
            self.pos += n
            return text
        if kind in _R_VECTORS:
            n = self._int()
            if n == -1:
                n = (self._int() << 32) + self._int()
            fmt = _R_VECTORS[kind]
            if fmt is None:
                values = [self.read() for _ in range(n)]
            else:
                values = list(struct.unpack_from(f">{n}{fmt}", self.data, self.pos))
                self.pos += struct.calcsize(f">{n}{fmt}")
            attrs = self.read() if has_attr else None
            return {"values": values, "attrs": dict(attrs or [])}
        raise ValueError(f"unsupported R value type {kind}")


def read_r_lazyload(rdx: Path, rdb: Path) -> dict[str, list[str]]:
    """The character vectors of an R package's lazy-load data (``Rdata.rdx`` + ``Rdata.rdb``),
    by name. Entries are a 4-byte length and a zlib stream (R's default compression)."""
    index = _RReader(gzip.decompress(rdx.read_bytes())).read()
    entries = index["values"][0]  # "variables": a named list of (offset, length)
    names = entries["attrs"]["names"]["values"]
    blob = rdb.read_bytes()
    out = {}
    for name, span in zip(names, entries["values"], strict=True):
        offset, length = span["values"]
        chunk = blob[offset : offset + length]
        value = _RReader(zlib.decompress(chunk[4:])).read()
        if isinstance(value, dict) and all(isinstance(v, str | None) for v in value["values"]):
            out[name] = [v or "" for v in value["values"]]
    return out
