"""A GGUF file's header: its metadata and where each tensor lies.

The `gguf` package's GGUFReader builds a numpy view for every part of every
field, and a tokenizer's vocabulary and merges are ~100,000 strings: it took
5.2 s to open SmolLM2-135M's file, 40 % of a warm `kdsl-llm run`. This
reads the same header in one pass over the bytes (0.3-0.5 s); the tensors'
bytes stay in the file, memory-mapped, and `gguf.quants` still dequantises
them.

Layout (GGUF v2 and v3, little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
magic "GGUF", u32 version, u64 tensor count, u64 metadata count; each
metadata entry a string key, u32 value type and the value (strings are u64
length + UTF-8 bytes; arrays u32 item type, u64 count, the items); each
tensor a string name, u32 dimension count, u64 dimensions (innermost first),
u32 ggml type, u64 offset from the data section, which starts at the next
multiple of general.alignment (32 by default).
"""
import struct
from dataclasses import dataclass

import numpy as np

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
          10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


@dataclass
class TensorInfo:
    name: str
    dims: tuple             # as stored: innermost first
    ggml_type: int
    offset: int             # from the start of the file


class GGUFHeaderError(ValueError):
    """The bytes are not a GGUF header this reader understands (the message says where)."""


class _Cursor:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def scalar(self, fmt):
        try:
            (value,) = struct.unpack_from(fmt, self.data, self.pos)
        except struct.error:
            raise GGUFHeaderError(f"the file ends inside its header (byte {self.pos})") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self):
        n = self.scalar("<Q")
        end = self.pos + n
        if end > len(self.data):
            raise GGUFHeaderError(f"a string of {n} bytes at byte {self.pos} runs past the end")
        text = bytes(self.data[self.pos:end]).decode("utf-8", "replace")
        self.pos = end
        return text

    def value(self, kind):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item == _STRING:
                return [self.string() for _ in range(count)]
            if item not in _NUMPY:
                raise GGUFHeaderError(f"unknown array item type {item} at byte {self.pos}")
            dtype = np.dtype(_NUMPY[item])
            end = self.pos + count * dtype.itemsize
            if end > len(self.data):
                raise GGUFHeaderError(f"an array of {count} items at byte {self.pos} runs past "
                                      "the end")
            values = np.frombuffer(self.data, dtype, count, self.pos).tolist()
            self.pos = end
            return values
        if kind not in _SCALARS:
            raise GGUFHeaderError(f"unknown value type {kind} at byte {self.pos}")
        return self.scalar(_SCALARS[kind])


def read_header(data):
    """(metadata {key: value}, [TensorInfo]) of the GGUF file whose bytes are `data`
    (a memory map or bytes). Strings come back as str, arrays as lists."""
    cur = _Cursor(data)
    if bytes(data[:4]) != b"GGUF":
        raise GGUFHeaderError(f"it starts with {bytes(data[:4])!r}, not b'GGUF'")
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise GGUFHeaderError(f"GGUF version {version} (a big-endian file reads as a huge "
                              "number); this reader takes versions 2 and 3, little-endian")
    n_tensors, n_fields = cur.scalar("<Q"), cur.scalar("<Q")
    metadata = {}
    for _ in range(n_fields):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar("<I")
        dims = tuple(cur.scalar("<Q") for _ in range(n_dims))
        infos.append(TensorInfo(name, dims, cur.scalar("<I"), cur.scalar("<Q")))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 1:
        raise GGUFHeaderError(f"general.alignment is {alignment!r}, not a positive integer")
    start = -(-cur.pos // alignment) * alignment
    for info in infos:
        info.offset += start
    return metadata, infos
