"""A minimal safetensors reader and writer (NumPy; no dependency beyond ml_dtypes, which JAX needs).

The format: an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}` (offsets
relative to the byte buffer that follows the header), then the tensors' little-endian, C-order bytes.

`SafeTensorsFile` parses only the header and maps the file: `get(name)` is a read-only view into the
mapping, so reading one tensor (or a slice of one) touches only its pages. `write` streams tensors
one at a time from a callback, so a writer never needs every tensor in memory at once.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"), "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NAMES = {dt: name for name, dt in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # as the reference implementation: refuse absurd headers


def dtype_name(dtype: Any) -> str:
    """The safetensors name ("F32", "BF16", ...) of a NumPy dtype (byte order normalised to little)."""
    dt = np.dtype(dtype)
    dt = dt.newbyteorder("<") if dt.byteorder == ">" else dt
    if dt not in _NAMES:
        raise ValueError(f"dtype {dt} has no safetensors equivalent (supported: {sorted(DTYPES)})")
    return _NAMES[dt]


class SafeTensorsFile:
    """A safetensors file opened for lazy reads: header parsed, data memory-mapped, nothing copied."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"{self.path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"{self.path}: header length {n} does not fit the file ({size} bytes)")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{self.path}: unreadable safetensors header: {e}") from e
        if not isinstance(header, dict):
            raise ValueError(f"{self.path}: safetensors header is not a JSON object")
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
        self._start = 8 + n
        data_bytes = size - self._start
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            try:
                dtype, shape, (begin, end) = DTYPES[entry["dtype"]], tuple(int(s) for s in entry["shape"]), \
                    entry["data_offsets"]
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{self.path}: tensor {name!r}: bad header entry {entry!r} ({e!r})") from e
            nbytes = math.prod(shape) * dtype.itemsize
            if not 0 <= begin <= end <= data_bytes or end - begin != nbytes:
                raise ValueError(f"{self.path}: tensor {name!r} ({entry['dtype']} {list(shape)}, {nbytes} bytes) has "
                                 f"data_offsets [{begin}, {end}] outside or inconsistent with the "
                                 f"{data_bytes} data bytes")
            self._entries[name] = (dtype, shape, begin, end)
        self._map = np.memmap(self.path, np.uint8, mode="r") if size else None

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def info(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """(dtype, shape) of `name`, from the header."""
        dtype, shape, _, _ = self._entry(name)
        return dtype, shape

    def get(self, name: str) -> np.ndarray:
        """A read-only view of tensor `name` into the mapped file (copy or slice it to read bytes)."""
        dtype, shape, begin, end = self._entry(name)
        if begin == end:
            return np.zeros(shape, dtype)
        return self._map[self._start + begin:self._start + end].view(dtype).reshape(shape)

    def _entry(self, name: str):
        if name not in self._entries:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        return self._entries[name]


def load_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a file, as lazy read-only views."""
    f = SafeTensorsFile(path)
    return {name: f.get(name) for name in f.keys()}


def write(path: str | os.PathLike, specs: Mapping[str, tuple[Any, Iterable[int]]],
          produce: Callable[[str], np.ndarray], metadata: Mapping[str, str] | None = None) -> int:
    """Write a safetensors file whose tensors (`name -> (dtype, shape)`, in this order) come one at a
    time from `produce(name)`; each is checked against its spec. Returns the file size in bytes."""
    entries, offset = {}, 0
    for name, (dtype, shape) in specs.items():
        shape = [int(s) for s in shape]
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        entries[name] = {"dtype": dtype_name(dtype), "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    raw = json.dumps({**header, **entries}, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)  # the data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, (dtype, shape) in specs.items():
            array = np.asarray(produce(name))
            want = (np.dtype(dtype), tuple(int(s) for s in shape))
            if (array.dtype, array.shape) != want:
                raise ValueError(f"{path}: tensor {name!r} is {array.dtype} {array.shape}, its header says "
                                 f"{want[0]} {want[1]}")
            if array.dtype.byteorder == ">":
                array = array.astype(array.dtype.newbyteorder("<"))
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)  # no bytes copy
        size = f.tell()
    return size


def save_file(tensors: Mapping[str, np.ndarray], path: str | os.PathLike,
              metadata: Mapping[str, str] | None = None) -> int:
    """Write arrays already in memory (see `write` for streaming)."""
    arrays = {name: np.asarray(a) for name, a in tensors.items()}
    return write(path, {n: (a.dtype, a.shape) for n, a in arrays.items()}, arrays.__getitem__, metadata)
