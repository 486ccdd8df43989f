"""GGUF v3 reader and writer in pure Python (stdlib; numpy optional).

Layout (little-endian; see model/gguf.h for the C reader's description):

    magic "GGUF", u32 version, u64 n_tensors, u64 n_kv,
    n_kv x (string key, u32 value type, value),
    n_tensors x (string name, u32 n_dims, n_dims x u64 ne, u32 ggml type, u64 offset),
    zero padding to general.alignment (default 32),
    tensor data: each tensor at its offset (relative to the start of the data
    section), every offset a multiple of the alignment, zero padding between.

A string is u64 length + UTF-8 bytes (no NUL).  An array value is u32 element
type + u64 count + the elements (arrays of arrays and arrays of strings are
allowed).  Tensor dims are listed fastest-first: ne[0] is the contiguous
dimension, i.e. the LAST dimension of a row-major (numpy / PyTorch) shape.

Writer
------
    w = GGUFWriter("out.gguf")               # alignment=32 by default
    w.add_string("general.architecture", "qwen3moe")
    w.add_uint32("qwen3moe.block_count", 48)
    w.add_array("tokenizer.ggml.tokens", ["a", "b"])          # elem type inferred
    w.add_array("x", [1, 2], GGUFValueType.UINT8)               # typed array
    w.add_array("y", [[1, 2], ["a"]])                           # nested arrays
    w.add_tensor("blk.0.attn_q.weight", ne=[2048, 4096], ggml_type=GGMLType.Q8_0,
                 data=<bytes | numpy array | iterable of chunks | zero-arg callable>)
    w.write()        # header, metadata, infos, then each tensor's data in turn

Tensor data is not read when add_tensor is called: a callable is called, and
an iterable iterated, only while that tensor is written, so a converter can
produce a large model one tensor (or one expert) at a time.  The number of
bytes each tensor produces is checked against its shape and type.

Reader
------
    r = GGUFReader("file.gguf")
    r.fields["tokenizer.ggml.tokens"]    -> GGUFField(name, type, value, elem_type)
    r.get("general.architecture")        -> the plain value (or a default)
    r.tensors                            -> list of GGUFTensorInfo (name, ne, ggml_type, offset, nbytes)
    r.tensor_bytes(t)                    -> the raw data (memoryview into an mmap)
    r.tensor_array(t)                    -> numpy view (numpy needed)

Encoders (numpy): encode_f32, encode_f16, encode_bf16, encode_q8_0 and
encode(array, ggml_type) -> bytes-like in the ggml layout; decode_q8_0 for tests.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import sys
from array import array
from enum import IntEnum
from typing import Any, Callable, Iterable

try:  # numpy is optional: metadata and vocab work without it
    import numpy as np
except ImportError:  # pragma: no cover - exercised by the no-numpy test
    np = None  # type: ignore[assignment]

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
GGUF_DEFAULT_ALIGNMENT = 32
GGML_QUANT_VERSION = 2

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("tools/gguf.py supports little-endian hosts only")


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# struct format per fixed-size value type (little-endian)
_SCALAR_FMT = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
# array.array typecodes with the same sizes (for fast bulk I/O)
_ARRAY_CODE = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
for _t, _c in _ARRAY_CODE.items():  # array item sizes are platform-defined: check once
    assert array(_c).itemsize == struct.calcsize("<" + _SCALAR_FMT[_t]), (_t, _c)

_INT_RANGE = {
    GGUFValueType.UINT8: (0, 2**8 - 1),
    GGUFValueType.INT8: (-(2**7), 2**7 - 1),
    GGUFValueType.UINT16: (0, 2**16 - 1),
    GGUFValueType.INT16: (-(2**15), 2**15 - 1),
    GGUFValueType.UINT32: (0, 2**32 - 1),
    GGUFValueType.INT32: (-(2**31), 2**31 - 1),
    GGUFValueType.UINT64: (0, 2**64 - 1),
    GGUFValueType.INT64: (-(2**63), 2**63 - 1),
}


class GGMLType(IntEnum):
    """Tensor element types, numbered as in kernels/cpu/types.h (ggml_type)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


QK_K = 256
# (elements per block, bytes per block): same table as kernels/cpu/types.c
GGML_BLOCK = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 2 + 16),
    GGMLType.Q4_1: (32, 2 + 2 + 16),
    GGMLType.Q5_0: (32, 2 + 4 + 16),
    GGMLType.Q5_1: (32, 2 + 2 + 4 + 16),
    GGMLType.Q8_0: (32, 2 + 32),
    GGMLType.Q8_1: (32, 2 + 2 + 32),
    GGMLType.Q2_K: (QK_K, QK_K // 16 + QK_K // 4 + 2 + 2),
    GGMLType.Q3_K: (QK_K, QK_K // 8 + QK_K // 4 + 12 + 2),
    GGMLType.Q4_K: (QK_K, 2 + 2 + 12 + QK_K // 2),
    GGMLType.Q5_K: (QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    GGMLType.Q6_K: (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
    GGMLType.Q8_K: (QK_K, 4 + QK_K + QK_K // 16 * 2),
    GGMLType.IQ2_XXS: (QK_K, 2 + QK_K // 8 * 2),
    GGMLType.IQ2_XS: (QK_K, 2 + QK_K // 8 * 2 + QK_K // 32),
    GGMLType.IQ3_XXS: (QK_K, 2 + 3 * QK_K // 8),
    GGMLType.IQ1_S: (QK_K, 2 + QK_K // 8 + QK_K // 16),
    GGMLType.IQ4_NL: (32, 2 + 16),
    GGMLType.IQ3_S: (QK_K, 2 + QK_K // 4 + QK_K // 32 + QK_K // 8 + QK_K // 64),
    GGMLType.IQ2_S: (QK_K, 2 + QK_K // 4 + QK_K // 32 + QK_K // 32),
    GGMLType.IQ4_XS: (QK_K, 2 + 2 + QK_K // 64 + QK_K // 2),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (QK_K, (QK_K - 4 * QK_K // 64) // 5 + QK_K // 64 + 2),
    GGMLType.TQ2_0: (QK_K, QK_K // 4 + 2),
    GGMLType.MXFP4: (32, 1 + 16),
}


class GGUFError(ValueError):
    """A malformed GGUF file or an invalid writer call."""


def tensor_nbytes(ne: Iterable[int], ggml_type: int) -> int:
    """Bytes of a tensor of shape ne (fastest-first) and that type."""
    ne = [int(n) for n in ne]
    try:
        blck, size = GGML_BLOCK[GGMLType(ggml_type)]
    except (ValueError, KeyError):
        raise GGUFError(f"unknown ggml type {ggml_type}") from None
    if any(n < 0 for n in ne):
        raise GGUFError(f"negative dimension in {ne}")
    if not ne:
        ne = [1]
    if ne[0] % blck:
        raise GGUFError(
            f"ne[0]={ne[0]} is not a multiple of the {GGMLType(ggml_type).name} block size {blck}"
        )
    n = ne[0] // blck * size
    for d in ne[1:]:
        n *= d
    return n


def align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# ---------------------------------------------------------------------------
# values


class GGUFValue:
    """An explicitly typed metadata value.

    For ARRAY, elem_type is the element type; for an array of arrays each
    element may itself be a GGUFValue (to type the inner array) or a plain
    list (its element type is inferred).
    """

    __slots__ = ("type", "value", "elem_type")

    def __init__(self, vtype: int, value: Any, elem_type: int | None = None):
        self.type = GGUFValueType(vtype)
        self.value = value
        self.elem_type = None if elem_type is None else GGUFValueType(elem_type)

    def __repr__(self) -> str:
        return f"GGUFValue({self.type.name}, {self.value!r}, {self.elem_type!r})"


def _infer_scalar_type(v: Any) -> GGUFValueType:
    if isinstance(v, GGUFValue):
        return v.type
    if isinstance(v, bool):
        return GGUFValueType.BOOL
    if isinstance(v, int):  # llama.cpp's gguf-py writes Python ints as i32
        lo, hi = _INT_RANGE[GGUFValueType.INT32]
        if lo <= v <= hi:
            return GGUFValueType.INT32
        return GGUFValueType.INT64 if v < 0 or v < 2**63 else GGUFValueType.UINT64
    if isinstance(v, float):
        return GGUFValueType.FLOAT32
    if isinstance(v, (str, bytes)):
        return GGUFValueType.STRING
    if isinstance(v, (list, tuple, array)) or (np is not None and isinstance(v, np.ndarray)):
        return GGUFValueType.ARRAY
    raise GGUFError(f"cannot infer a GGUF type for {type(v).__name__} value {v!r}")


_NP_TO_VTYPE = {}
if np is not None:
    _NP_TO_VTYPE = {
        np.dtype(np.uint8): GGUFValueType.UINT8,
        np.dtype(np.int8): GGUFValueType.INT8,
        np.dtype(np.uint16): GGUFValueType.UINT16,
        np.dtype(np.int16): GGUFValueType.INT16,
        np.dtype(np.uint32): GGUFValueType.UINT32,
        np.dtype(np.int32): GGUFValueType.INT32,
        np.dtype(np.float32): GGUFValueType.FLOAT32,
        np.dtype(np.bool_): GGUFValueType.BOOL,
        np.dtype(np.uint64): GGUFValueType.UINT64,
        np.dtype(np.int64): GGUFValueType.INT64,
        np.dtype(np.float64): GGUFValueType.FLOAT64,
    }
_ARRAYCODE_TO_VTYPE = {c: t for t, c in _ARRAY_CODE.items()}


def _infer_elem_type(values: Any) -> GGUFValueType:
    if isinstance(values, array):
        return _ARRAYCODE_TO_VTYPE[values.typecode]
    if np is not None and isinstance(values, np.ndarray):
        try:
            return _NP_TO_VTYPE[values.dtype.newbyteorder("=")]
        except KeyError:
            raise GGUFError(f"no GGUF element type for numpy dtype {values.dtype}") from None
    if len(values) == 0:
        return GGUFValueType.INT32  # any fixed type will do for an empty array
    types = {_infer_scalar_type(v) for v in values}
    if types == {GGUFValueType.INT32, GGUFValueType.INT64}:
        return GGUFValueType.INT64
    if len(types) != 1:
        names = sorted(t.name for t in types)
        raise GGUFError(f"array with mixed element types {names}: give elem_type")
    return types.pop()


def _enc_string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _check_int(vtype: GGUFValueType, v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if np is not None and isinstance(v, np.integer):
            v = int(v)
        else:
            raise GGUFError(f"{what}: {vtype.name} needs an int, got {type(v).__name__}")
    lo, hi = _INT_RANGE[vtype]
    if not lo <= v <= hi:
        raise GGUFError(f"{what}: {v} out of range for {vtype.name}")
    return v


def _enc_scalar(vtype: GGUFValueType, v: Any, what: str) -> bytes:
    if vtype == GGUFValueType.STRING:
        if not isinstance(v, (str, bytes)):
            raise GGUFError(f"{what}: STRING needs str, got {type(v).__name__}")
        return _enc_string(v)
    if vtype == GGUFValueType.BOOL:
        return b"\x01" if v else b"\x00"
    if vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        try:
            return struct.pack("<" + _SCALAR_FMT[vtype], float(v))
        except (OverflowError, TypeError, ValueError) as e:
            raise GGUFError(f"{what}: {v!r} as {vtype.name}: {e}") from None
    return struct.pack("<" + _SCALAR_FMT[vtype], _check_int(vtype, v, what))


def _enc_array(values: Any, elem_type: GGUFValueType | None, what: str) -> bytes:
    """u32 elem type, u64 count, elements."""
    if isinstance(values, GGUFValue):
        if values.type != GGUFValueType.ARRAY:
            raise GGUFError(f"{what}: expected an ARRAY value")
        elem_type, values = values.elem_type, values.value
    if elem_type is None:
        elem_type = _infer_elem_type(values)
    elem_type = GGUFValueType(elem_type)
    n = len(values)
    head = struct.pack("<IQ", elem_type, n)
    if elem_type == GGUFValueType.STRING:
        def _bytes(s: Any) -> bytes:
            if isinstance(s, (bytes, bytearray, memoryview)):
                return bytes(s)
            raise GGUFError(f"{what}: array of STRING holds a {type(s).__name__}")

        enc = [s.encode("utf-8") if isinstance(s, str) else _bytes(s) for s in values]
        parts: list[Any] = [None] * (2 * len(enc))
        parts[0::2] = map(struct.Struct("<Q").pack, map(len, enc))
        parts[1::2] = enc
        return head + b"".join(parts)
    if elem_type == GGUFValueType.ARRAY:
        return head + b"".join(_enc_array(v, None, f"{what}[{i}]") for i, v in enumerate(values))
    if elem_type == GGUFValueType.BOOL:
        return head + bytes(1 if v else 0 for v in values)
    # fixed-size numbers: fast paths for numpy and array.array
    if np is not None and isinstance(values, np.ndarray):
        dt = np.dtype("<" + _SCALAR_FMT[elem_type])
        return head + np.ascontiguousarray(values, dtype=dt).tobytes()
    code = _ARRAY_CODE[elem_type]
    if isinstance(values, array) and values.typecode == code:
        return head + values.tobytes()
    if elem_type in _INT_RANGE:
        lo, hi = _INT_RANGE[elem_type]
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                _check_int(elem_type, v, f"{what}[{i}]")
    try:
        return head + array(code, values).tobytes()
    except (TypeError, OverflowError) as e:
        raise GGUFError(f"{what}: {e}") from None


def encode_value(vtype: int, value: Any, elem_type: int | None = None, what: str = "value") -> bytes:
    """The bytes of a typed value (without the type tag)."""
    vtype = GGUFValueType(vtype)
    if vtype == GGUFValueType.ARRAY:
        return _enc_array(value, None if elem_type is None else GGUFValueType(elem_type), what)
    return _enc_scalar(vtype, value, what)


# ---------------------------------------------------------------------------
# writer


class _TensorEntry:
    __slots__ = ("name", "ne", "ggml_type", "data", "nbytes", "offset")

    def __init__(self, name, ne, ggml_type, data, nbytes, offset):
        self.name = name
        self.ne = ne
        self.ggml_type = ggml_type
        self.data = data
        self.nbytes = nbytes
        self.offset = offset


def _as_buffer(chunk: Any) -> memoryview:
    if np is not None and isinstance(chunk, np.ndarray):
        if chunk.dtype.byteorder == ">":
            chunk = chunk.astype(chunk.dtype.newbyteorder("<"))
        chunk = np.ascontiguousarray(chunk)
        return memoryview(chunk).cast("B")
    mv = memoryview(chunk)
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


class GGUFWriter:
    """Collects metadata and tensor infos, then streams the file in one pass.

    Metadata keys keep the order in which they were first set (setting a key
    again replaces its value in place).  general.alignment is written when the
    alignment is not the default, or when set explicitly.
    """

    def __init__(self, path: str | os.PathLike | None = None, alignment: int = GGUF_DEFAULT_ALIGNMENT,
                 version: int = GGUF_VERSION):
        if version not in (2, 3):
            raise GGUFError(f"GGUF version {version} not supported (2 or 3)")
        if alignment <= 0 or alignment & (alignment - 1) or alignment % 8:
            # ggml requires a power of two; 8 keeps every u64 field aligned
            raise GGUFError(f"alignment {alignment} must be a power of two >= 8")
        self.path = path
        self.version = version
        self.alignment = alignment
        self.kv: dict[str, tuple[GGUFValueType, Any, GGUFValueType | None]] = {}
        self.tensors: list[_TensorEntry] = []
        self._names: set[str] = set()
        self._data_size = 0
        if alignment != GGUF_DEFAULT_ALIGNMENT:
            self.add_uint32("general.alignment", alignment)

    # -- metadata -----------------------------------------------------------
    def add_kv(self, key: str, value: Any, vtype: int | None = None, elem_type: int | None = None) -> None:
        """Set key to value; the type is inferred when vtype is None.

        Inference: bool -> BOOL, int -> INT32 (INT64/UINT64 if it does not
        fit), float -> FLOAT32, str -> STRING, list/tuple/array -> ARRAY
        (element type inferred likewise unless elem_type is given),
        GGUFValue -> its own type.
        """
        if not isinstance(key, str) or not key:
            raise GGUFError("metadata key must be a non-empty string")
        if isinstance(value, GGUFValue) and vtype is None:
            vtype, elem_type, value = value.type, value.elem_type, value.value
        if vtype is None:
            vtype = _infer_scalar_type(value)
        vtype = GGUFValueType(vtype)
        if vtype == GGUFValueType.ARRAY and elem_type is None:
            elem_type = _infer_elem_type(value)
        # encode now: errors surface at the call that caused them
        enc = encode_value(vtype, value, elem_type, key)
        if key == "general.alignment":
            if vtype != GGUFValueType.UINT32:
                raise GGUFError("general.alignment must be a UINT32")
            if value <= 0 or value & (value - 1) or value % 8:
                raise GGUFError(f"alignment {value} must be a power of two >= 8")
            if self.tensors:
                raise GGUFError("set general.alignment before adding tensors")
            self.alignment = value
        self.kv[key] = (vtype, enc, None if elem_type is None else GGUFValueType(elem_type))

    def add_uint8(self, key, v): self.add_kv(key, v, GGUFValueType.UINT8)
    def add_int8(self, key, v): self.add_kv(key, v, GGUFValueType.INT8)
    def add_uint16(self, key, v): self.add_kv(key, v, GGUFValueType.UINT16)
    def add_int16(self, key, v): self.add_kv(key, v, GGUFValueType.INT16)
    def add_uint32(self, key, v): self.add_kv(key, v, GGUFValueType.UINT32)
    def add_int32(self, key, v): self.add_kv(key, v, GGUFValueType.INT32)
    def add_uint64(self, key, v): self.add_kv(key, v, GGUFValueType.UINT64)
    def add_int64(self, key, v): self.add_kv(key, v, GGUFValueType.INT64)
    def add_float32(self, key, v): self.add_kv(key, v, GGUFValueType.FLOAT32)
    def add_float64(self, key, v): self.add_kv(key, v, GGUFValueType.FLOAT64)
    def add_bool(self, key, v): self.add_kv(key, bool(v), GGUFValueType.BOOL)
    def add_string(self, key, v): self.add_kv(key, v, GGUFValueType.STRING)

    def add_array(self, key: str, values: Any, elem_type: int | None = None) -> None:
        self.add_kv(key, values, GGUFValueType.ARRAY, elem_type)

    # -- tensors ------------------------------------------------------------
    def add_tensor(self, name: str, ne: Iterable[int], ggml_type: int, data: Any = None) -> None:
        """Declare a tensor: ne is fastest-first (reversed numpy shape).

        data: bytes-like, numpy array, an iterable of such chunks, or a
        zero-argument callable returning any of those; it is consumed only
        while the file is written.  None: give the data later with
        write_tensor_data (streaming by hand, after write_header).
        """
        if not isinstance(name, str) or not name:
            raise GGUFError("tensor name must be a non-empty string")
        if len(name.encode("utf-8")) >= 64:
            raise GGUFError(f"tensor name {name!r} is 64 bytes or longer (ggml's limit)")
        if name in self._names:
            raise GGUFError(f"duplicate tensor name {name!r}")
        ne = [int(n) for n in ne]
        if not 1 <= len(ne) <= 4:
            raise GGUFError(f"tensor {name!r}: {len(ne)} dims (1..4 allowed)")
        ggml_type = GGMLType(ggml_type)
        nbytes = tensor_nbytes(ne, ggml_type)
        offset = align_up(self._data_size, self.alignment)
        self._data_size = offset + nbytes
        self._names.add(name)
        self.tensors.append(_TensorEntry(name, ne, ggml_type, data, nbytes, offset))

    def add_tensor_array(self, name: str, arr: Any, ggml_type: int | None = None) -> None:
        """Encode a float numpy array (row-major) as ggml_type (default: F32)."""
        if np is None:
            raise GGUFError("numpy is needed to encode tensors")
        arr = np.asarray(arr)
        gt = GGMLType.F32 if ggml_type is None else GGMLType(ggml_type)
        ne = list(reversed(arr.shape)) or [1]
        self.add_tensor(name, ne, gt, lambda: encode(arr, gt))

    # -- output -------------------------------------------------------------
    def _header_bytes(self) -> bytes:
        parts = [GGUF_MAGIC, struct.pack("<IQQ", self.version, len(self.tensors), len(self.kv))]
        for key, (vtype, enc, _elem) in self.kv.items():
            parts.append(_enc_string(key))
            parts.append(struct.pack("<I", vtype))
            parts.append(enc)
        for t in self.tensors:
            parts.append(_enc_string(t.name))
            parts.append(struct.pack("<I", len(t.ne)))
            parts.append(struct.pack(f"<{len(t.ne)}Q", *t.ne))
            parts.append(struct.pack("<IQ", t.ggml_type, t.offset))
        head = b"".join(parts)
        if not self.tensors:  # as llama.cpp's vocab files: nothing follows, no padding
            return head
        return head + b"\x00" * (align_up(len(head), self.alignment) - len(head))

    def write_header(self, f: Any = None) -> None:
        """Open the output (path given at construction, or f) and write
        everything up to the tensor data."""
        if f is None:
            if self.path is None:
                raise GGUFError("no output path")
            f = open(self.path, "wb")
            self._own = True
        else:
            self._own = False
        self._f = f
        self._f.write(self._header_bytes())
        self._next = 0  # index of the tensor being written
        self._written = 0  # bytes of it written so far
        self._pos = 0  # position in the data section

    def write_tensor_data(self, chunk: Any) -> None:
        """Bytes of the next tensor (may come in pieces that add up)."""
        mv = _as_buffer(chunk)
        n = mv.nbytes
        while n:
            if self._next >= len(self.tensors):
                raise GGUFError("more tensor data than declared")
            t = self.tensors[self._next]
            if self._written == 0 and self._pos < t.offset:
                self._f.write(b"\x00" * (t.offset - self._pos))
                self._pos = t.offset
            take = min(n, t.nbytes - self._written)
            self._f.write(mv[:take])
            mv = mv[take:]
            n -= take
            self._written += take
            self._pos += take
            if self._written == t.nbytes:
                self._next += 1
                self._written = 0

    def _write_source(self, t: _TensorEntry) -> None:
        src = t.data
        if src is None:
            raise GGUFError(f"tensor {t.name!r} has no data")
        if callable(src):
            src = src()
        start_idx, before = self._next, self._pos
        if isinstance(src, (bytes, bytearray, memoryview)) or (np is not None and isinstance(src, np.ndarray)):
            chunks: Iterable[Any] = (src,)
        else:
            chunks = src
        got = 0
        for c in chunks:
            mv = _as_buffer(c)
            got += mv.nbytes
            if got > t.nbytes:
                raise GGUFError(f"tensor {t.name!r}: data is longer than {t.nbytes} bytes")
            self.write_tensor_data(mv)
        if got != t.nbytes:
            raise GGUFError(f"tensor {t.name!r}: {got} bytes of data, expected {t.nbytes}")
        if t.nbytes == 0:
            self._next += 1
        assert self._next == start_idx + 1 and self._pos >= before

    def close(self) -> None:
        """Check that every tensor was written, pad the end, close the file."""
        if self._next != len(self.tensors):
            missing = self.tensors[self._next].name
            raise GGUFError(f"tensor data missing from {missing!r} on")
        end = align_up(self._pos, self.alignment) if self.tensors else self._pos
        if end > self._pos:
            self._f.write(b"\x00" * (end - self._pos))
        if self._own:
            self._f.close()
        else:
            self._f.flush()

    def write(self, f: Any = None) -> None:
        """Write the whole file; tensors' data come from add_tensor's data."""
        self.write_header(f)
        try:
            for t in self.tensors:
                self._write_source(t)
            self.close()
        except BaseException:
            if self._own:
                self._f.close()
                try:
                    os.unlink(self.path)  # never leave a half-written model
                except OSError:
                    pass
            raise

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.write(buf)
        return buf.getvalue()


# ---------------------------------------------------------------------------
# reader


class GGUFField:
    __slots__ = ("name", "type", "value", "elem_type")

    def __init__(self, name, vtype, value, elem_type=None):
        self.name = name
        self.type = vtype
        self.value = value
        self.elem_type = elem_type

    def __repr__(self) -> str:
        v = self.value
        if isinstance(v, (list, array)) and len(v) > 8:
            v = f"[{len(v)} items]"
        et = f", {self.elem_type.name}" if self.elem_type is not None else ""
        return f"GGUFField({self.name!r}, {self.type.name}{et}, {v!r})"


class GGUFTensorInfo:
    __slots__ = ("name", "ne", "ggml_type", "offset", "nbytes", "data_offset")

    def __init__(self, name, ne, ggml_type, offset, nbytes, data_offset):
        self.name = name
        self.ne = ne
        self.ggml_type = ggml_type
        self.offset = offset
        self.nbytes = nbytes
        self.data_offset = data_offset  # absolute position in the file

    @property
    def shape(self) -> tuple[int, ...]:
        """Row-major (numpy) shape: ne reversed."""
        return tuple(reversed(self.ne))

    def __repr__(self) -> str:
        try:
            tn = GGMLType(self.ggml_type).name
        except ValueError:
            tn = str(self.ggml_type)
        return f"GGUFTensorInfo({self.name!r}, ne={self.ne}, {tn}, offset={self.offset})"


class GGUFReader:
    """Parses a whole GGUF file (mapped read-only) and checks its structure.

    Arrays of numbers are returned as array.array (fast); strings as str
    (bytes when not valid UTF-8); arrays of arrays as lists of the inner
    value.  fields keeps file order.
    """

    def __init__(self, path: str | os.PathLike | bytes, decode_strings: bool = True):
        if isinstance(path, (bytes, bytearray, memoryview)):
            self._mm = None
            self.buf = memoryview(bytes(path))
        else:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            self.buf = memoryview(self._mm) if self._mm is not None else memoryview(b"")
        self.decode_strings = decode_strings
        self.fields: dict[str, GGUFField] = {}
        self.tensors: list[GGUFTensorInfo] = []
        self._parse()

    def close(self) -> None:
        self.buf.release()
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a numpy view still holds it: leave to GC
                pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- low level ----------------------------------------------------------
    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError(f"truncated file: {what} needs {n} bytes at offset {self.pos}")

    def _unpack(self, fmt: str, what: str):
        s = struct.calcsize("<" + fmt)
        self._need(s, what)
        v = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += s
        return v

    def _string(self, what: str):
        (n,) = self._unpack("Q", what)
        self._need(n, what)
        b = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        if self.decode_strings:
            try:
                return b.decode("utf-8")
            except UnicodeDecodeError:
                return b
        return b

    def _value(self, vtype: int, what: str, depth: int = 0):
        try:
            vtype = GGUFValueType(vtype)
        except ValueError:
            raise GGUFError(f"{what}: unknown value type {vtype}") from None
        if vtype == GGUFValueType.STRING:
            return self._string(what), None
        if vtype == GGUFValueType.ARRAY:
            if depth > 8:
                raise GGUFError(f"{what}: arrays nested too deep")
            et, n = self._unpack("IQ", what)
            try:
                et = GGUFValueType(et)
            except ValueError:
                raise GGUFError(f"{what}: unknown array element type {et}") from None
            if et == GGUFValueType.STRING:
                out = []
                buf, pos, dec = self.buf, self.pos, self.decode_strings
                end = len(buf)
                for i in range(n):
                    if pos + 8 > end:
                        raise GGUFError(f"truncated file: {what}[{i}]")
                    (ln,) = struct.unpack_from("<Q", buf, pos)
                    pos += 8
                    if pos + ln > end:
                        raise GGUFError(f"truncated file: {what}[{i}] length {ln}")
                    b = bytes(buf[pos : pos + ln])
                    pos += ln
                    if dec:
                        try:
                            b = b.decode("utf-8")
                        except UnicodeDecodeError:
                            pass
                    out.append(b)
                self.pos = pos
                return out, et
            if et == GGUFValueType.ARRAY:
                out = []
                for i in range(n):
                    v, _inner = self._value(GGUFValueType.ARRAY, f"{what}[{i}]", depth + 1)
                    out.append(v)
                return out, et
            if et == GGUFValueType.BOOL:
                self._need(n, what)
                out = [b != 0 for b in self.buf[self.pos : self.pos + n]]
                self.pos += n
                return out, et
            a = array(_ARRAY_CODE[et])
            nb = n * a.itemsize
            self._need(nb, what)
            a.frombytes(self.buf[self.pos : self.pos + nb])
            self.pos += nb
            return a, et
        (v,) = self._unpack(_SCALAR_FMT[vtype], what)
        return v, None

    def _parse(self) -> None:
        self.pos = 0
        self._need(4, "magic")
        if bytes(self.buf[0:4]) != GGUF_MAGIC:
            raise GGUFError(f"not a GGUF file (magic {bytes(self.buf[0:4])!r})")
        self.pos = 4
        (self.version,) = self._unpack("I", "version")
        if self.version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {self.version}")
        n_tensors, n_kv = self._unpack("QQ", "counts")
        for i in range(n_kv):
            key = self._string(f"key #{i}")
            if isinstance(key, bytes):
                key = key.decode("utf-8", "replace")
            if key in self.fields:
                raise GGUFError(f"duplicate key {key!r}")
            (vt,) = self._unpack("I", f"type of {key}")
            try:
                vt = GGUFValueType(vt)
            except ValueError:
                raise GGUFError(f"{key}: unknown value type {vt}") from None
            val, et = self._value(vt, key)
            self.fields[key] = GGUFField(key, vt, val, et)
        self.alignment = GGUF_DEFAULT_ALIGNMENT
        if "general.alignment" in self.fields:
            fa = self.fields["general.alignment"]
            a = fa.value
            if fa.type != GGUFValueType.UINT32 or a <= 0 or a & (a - 1):
                raise GGUFError(f"general.alignment: bad value {a!r}")
            self.alignment = a
        infos = []
        for i in range(n_tensors):
            name = self._string(f"tensor #{i} name")
            (nd,) = self._unpack("I", f"tensor {name} n_dims")
            if not 1 <= nd <= 4:
                raise GGUFError(f"tensor {name}: n_dims {nd}")
            ne = list(self._unpack(f"{nd}Q", f"tensor {name} dims"))
            gt, off = self._unpack("IQ", f"tensor {name} type/offset")
            if off % self.alignment:
                raise GGUFError(f"tensor {name}: offset {off} not aligned to {self.alignment}")
            infos.append((name, ne, gt, off))
        self.data_offset = align_up(self.pos, self.alignment)
        size = len(self.buf)
        names = set()
        for name, ne, gt, off in infos:
            if name in names:
                raise GGUFError(f"duplicate tensor {name!r}")
            names.add(name)
            nb = tensor_nbytes(ne, gt)
            if self.data_offset + off + nb > size:
                raise GGUFError(f"tensor {name}: data [{off}, {off + nb}) past the end of the file")
            self.tensors.append(GGUFTensorInfo(name, ne, gt, off, nb, self.data_offset + off))

    # -- access -------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        f = self.fields.get(key)
        return default if f is None else f.value

    def tensor(self, name: str | GGUFTensorInfo) -> GGUFTensorInfo:
        if isinstance(name, GGUFTensorInfo):
            return name
        if not hasattr(self, "_by_name"):
            self._by_name = {t.name: t for t in self.tensors}
        return self._by_name[name]

    def tensor_bytes(self, t: GGUFTensorInfo | str) -> memoryview:
        t = self.tensor(t)
        return self.buf[t.data_offset : t.data_offset + t.nbytes]

    def tensor_array(self, t: GGUFTensorInfo | str):
        """numpy view: float types with their dtype in row-major shape;
        quantized types as uint8 of shape (rows..., row bytes)."""
        if np is None:
            raise GGUFError("numpy is needed for tensor_array")
        t = self.tensor(t)
        raw = np.frombuffer(self.tensor_bytes(t), dtype=np.uint8)
        dt = {
            GGMLType.F32: "<f4", GGMLType.F16: "<f2", GGMLType.BF16: "<u2", GGMLType.F64: "<f8",
            GGMLType.I8: "i1", GGMLType.I16: "<i2", GGMLType.I32: "<i4", GGMLType.I64: "<i8",
        }.get(t.ggml_type)
        if dt is not None:
            return raw.view(dt).reshape(t.shape)
        blck, size = GGML_BLOCK[GGMLType(t.ggml_type)]
        return raw.reshape(tuple(reversed(t.ne[1:])) + (t.ne[0] // blck * size,))


# ---------------------------------------------------------------------------
# encoders (numpy)


def _need_np():
    if np is None:
        raise GGUFError("numpy is needed to encode tensors (pip install numpy)")


def encode_f32(a):
    _need_np()
    return np.ascontiguousarray(a, dtype="<f4")


def encode_f16(a):
    _need_np()
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32).astype("<f2"))


def f32_to_bf16_bits(a):
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16), as ggml does
    (NaN kept quiet)."""
    _need_np()
    n = np.ascontiguousarray(a, dtype="<f4").view("<u4")
    n = np.where((n & 0x7FFFFFFF) > 0x7F800000, (n & 0xFFFF0000) | (64 << 16), n)
    # no overflow in u32: only NaNs (already truncated above) exceed 0xFFFF7FFF
    n = (n + (np.uint32(0x7FFF) + ((n >> 16) & np.uint32(1)))) >> 16
    return n.astype("<u2")


def bf16_bits_to_f32(u):
    _need_np()
    return (np.asarray(u, dtype=np.uint32) << 16).view("<f4")


def encode_bf16(a):
    return f32_to_bf16_bits(a)


def _roundf(x):
    # C roundf: halves away from zero (np.round rounds halves to even)
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def encode_q8_0(a):
    """ggml Q8_0: per 32 values, fp16 d = max|x|/127, then 32 int8 round(x/d).

    a's last dimension must be a multiple of 32; returns uint8 array of shape
    a.shape[:-1] + (a.shape[-1] // 32 * 34,)."""
    _need_np()
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 0 or a.shape[-1] % 32:
        raise GGUFError(f"Q8_0 needs rows of a multiple of 32 values, got shape {a.shape}")
    lead = a.shape[:-1]
    blocks = a.reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = _roundf(blocks * inv).astype(np.int8)
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8)
    out[:, 2:] = qs.view(np.uint8)
    return out.reshape(lead + (a.shape[-1] // 32 * 34,))


def decode_q8_0(raw, n_per_row: int):
    """Inverse of encode_q8_0 (for tests): float32 array (..., n_per_row)."""
    _need_np()
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1, 34)
    d = raw[:, :2].copy().view("<f2").astype(np.float32)
    qs = raw[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * qs).reshape(-1, n_per_row)


_ENCODERS: dict[GGMLType, Callable[[Any], Any]] = {
    GGMLType.F32: encode_f32,
    GGMLType.F16: encode_f16,
    GGMLType.BF16: encode_bf16,
    GGMLType.Q8_0: encode_q8_0,
}


def encode(a, ggml_type: int):
    """Encode a float array (row-major) as ggml_type; returns a numpy array
    whose bytes are the tensor data."""
    try:
        enc = _ENCODERS[GGMLType(ggml_type)]
    except KeyError:
        raise GGUFError(f"no encoder for {GGMLType(ggml_type).name}") from None
    return enc(a)


# ---------------------------------------------------------------------------
# command line: dump a file


def _main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Print a GGUF file's metadata and tensor infos.")
    ap.add_argument("file")
    ap.add_argument("--no-tensors", action="store_true")
    args = ap.parse_args(argv)
    r = GGUFReader(args.file)
    print(f"GGUF v{r.version}: {len(r.fields)} keys, {len(r.tensors)} tensors, "
          f"alignment {r.alignment}, data at {r.data_offset}")
    for f in r.fields.values():
        v = f.value
        if f.type == GGUFValueType.ARRAY:
            head = list(v[:5])
            more = f" ... ({len(v)} items)" if len(v) > 5 else ""
            print(f"  {f.name}: array<{f.elem_type.name}> {head!r}{more}")
        elif f.type == GGUFValueType.STRING and len(v) > 100:
            print(f"  {f.name}: string {v[:100]!r}... ({len(v)} chars)")
        else:
            print(f"  {f.name}: {f.type.name} {v!r}")
    if not args.no_tensors:
        for t in r.tensors:
            try:
                tn = GGMLType(t.ggml_type).name
            except ValueError:
                tn = str(t.ggml_type)
            print(f"  {t.name:40s} {tn:6s} ne={t.ne} offset={t.offset}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
