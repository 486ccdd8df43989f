"""Tests of tools/gguf.py and tools/hf2gguf.py (pytest; numpy optional).

    python3 -m pytest -q tests/py

Real data come from $MOED_SHARED (default: ../shared beside the repository):
vocab/*.gguf and hf-tokenizers/{qwen3,llama3}.  Tests that need numpy skip
without it; tests that need the shared data skip when it is absent.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from array import array
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
sys.path.insert(0, str(TOOLS))

import gguf  # noqa: E402
import hf2gguf  # noqa: E402
from gguf import GGMLType, GGUFReader, GGUFValue, GGUFValueType as VT, GGUFWriter  # noqa: E402

try:
    import numpy as np
except ImportError:
    np = None

SHARED = Path(os.environ.get("MOED_SHARED", ROOT.parent / "shared"))
VOCAB = SHARED / "vocab"
HFTOK = SHARED / "hf-tokenizers"

need_np = pytest.mark.skipif(np is None, reason="numpy not installed")
need_vocab = pytest.mark.skipif(not VOCAB.is_dir(), reason=f"no {VOCAB}")
need_hftok = pytest.mark.skipif(not HFTOK.is_dir(), reason=f"no {HFTOK}")


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


# ===========================================================================
# gguf.py: metadata


SCALARS = [
    ("u8", VT.UINT8, [0, 255]),
    ("i8", VT.INT8, [-128, 127]),
    ("u16", VT.UINT16, [0, 65535]),
    ("i16", VT.INT16, [-32768, 32767]),
    ("u32", VT.UINT32, [0, 2**32 - 1]),
    ("i32", VT.INT32, [-(2**31), 2**31 - 1]),
    ("u64", VT.UINT64, [0, 2**64 - 1]),
    ("i64", VT.INT64, [-(2**63), 2**63 - 1]),
    ("f32", VT.FLOAT32, [0.1, -3.4e38, float("inf")]),
    ("f64", VT.FLOAT64, [0.1, -1e300]),
    ("bool", VT.BOOL, [True, False]),
    ("str", VT.STRING, ["", "héllo wörld ✅ 你好\n\t\x00end"]),
]


def _roundtrip(w: GGUFWriter) -> GGUFReader:
    return GGUFReader(w.to_bytes())


def test_every_scalar_type_roundtrips():
    w = GGUFWriter()
    for name, vt, vals in SCALARS:
        for i, v in enumerate(vals):
            w.add_kv(f"s.{name}.{i}", v, vt)
    r = _roundtrip(w)
    assert r.version == 3
    for name, vt, vals in SCALARS:
        for i, v in enumerate(vals):
            f = r.fields[f"s.{name}.{i}"]
            assert f.type == vt
            assert f.value == (f32(v) if vt == VT.FLOAT32 else v)
    # key order is kept
    assert list(r.fields)[:2] == ["s.u8.0", "s.u8.1"]


def test_type_inference_and_typed_helpers():
    w = GGUFWriter()
    w.add_kv("int", 7)
    w.add_kv("bigint", 2**40)
    w.add_kv("float", 1.5)
    w.add_kv("bool", True)
    w.add_kv("str", "x")
    w.add_kv("arr", [1, 2, 3])
    w.add_kv("strs", ["a", "b"])
    w.add_uint32("u32", 5)
    w.add_float32("f", 0.25)
    w.add_kv("typed", GGUFValue(VT.UINT16, 9))
    w.add_kv("int", 8)  # replaces, keeps position
    r = _roundtrip(w)
    t = {k: f.type for k, f in r.fields.items()}
    assert t == {"int": VT.INT32, "bigint": VT.INT64, "float": VT.FLOAT32, "bool": VT.BOOL,
                 "str": VT.STRING, "arr": VT.ARRAY, "strs": VT.ARRAY, "u32": VT.UINT32,
                 "f": VT.FLOAT32, "typed": VT.UINT16}
    assert list(r.fields)[0] == "int" and r.get("int") == 8
    assert r.fields["arr"].elem_type == VT.INT32 and list(r.get("arr")) == [1, 2, 3]
    assert r.fields["strs"].elem_type == VT.STRING


def test_every_array_type_and_nesting_roundtrips():
    w = GGUFWriter()
    for name, vt, vals in SCALARS:
        w.add_array(f"a.{name}", vals, vt)
        w.add_array(f"e.{name}", [], vt)  # empty arrays of every type
    w.add_array("a.arraycode", array("h", [1, -2, 3]))
    nested = [[1, 2], [3], []]
    w.add_array("n.ints", nested)
    w.add_array("n.strs", [["a", "b"], ["ü"]])
    w.add_array("n.deep", [[[1.5], [2.5, 3.5]], [[]]])
    w.add_array("n.typed", [GGUFValue(VT.ARRAY, [1, 2], VT.UINT8), GGUFValue(VT.ARRAY, ["x"], VT.STRING)],
                VT.ARRAY)
    if np is not None:
        w.add_array("a.np", np.arange(5, dtype=np.uint64))
    r = _roundtrip(w)
    for name, vt, vals in SCALARS:
        f = r.fields[f"a.{name}"]
        assert f.type == VT.ARRAY and f.elem_type == vt
        exp = [f32(v) for v in vals] if vt == VT.FLOAT32 else vals
        assert list(f.value) == exp
        e = r.fields[f"e.{name}"]
        assert e.elem_type == vt and len(e.value) == 0
    assert r.fields["a.arraycode"].elem_type == VT.INT16
    assert [list(x) for x in r.get("n.ints")] == nested
    assert r.fields["n.ints"].elem_type == VT.ARRAY
    assert r.get("n.strs") == [["a", "b"], ["ü"]]
    assert [[list(y) for y in x] for x in r.get("n.deep")] == [[[1.5], [2.5, 3.5]], [[]]]
    assert [list(x) for x in r.get("n.typed")] == [[1, 2], ["x"]]
    if np is not None:
        assert r.fields["a.np"].elem_type == VT.UINT64 and list(r.get("a.np")) == [0, 1, 2, 3, 4]


def test_known_bytes_layout():
    """The exact bytes of a small file, written out by hand from the spec."""
    w = GGUFWriter()
    w.add_uint32("k", 7)
    w.add_tensor("t", [2], GGMLType.F32, struct.pack("<2f", 1.0, 2.0))
    b = w.to_bytes()
    head = (b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
            + struct.pack("<Q", 1) + b"k" + struct.pack("<II", VT.UINT32, 7)
            + struct.pack("<Q", 1) + b"t" + struct.pack("<IQ", 1, 2) + struct.pack("<IQ", 0, 0))
    pad = (-len(head)) % 32
    data = struct.pack("<2f", 1.0, 2.0)
    exp = head + b"\0" * pad + data + b"\0" * ((-len(data)) % 32)
    assert b == exp


def test_writer_rejects_bad_values():
    w = GGUFWriter()
    with pytest.raises(gguf.GGUFError):
        w.add_uint8("x", 256)
    with pytest.raises(gguf.GGUFError):
        w.add_int32("x", 2**31)
    with pytest.raises(gguf.GGUFError):
        w.add_uint32("x", -1)
    with pytest.raises(gguf.GGUFError):
        w.add_array("x", [1, "a"])  # mixed, untyped
    with pytest.raises(gguf.GGUFError):
        w.add_array("x", [1, 300], VT.UINT8)
    with pytest.raises(gguf.GGUFError):
        w.add_kv("x", object())
    with pytest.raises(gguf.GGUFError):
        w.add_float32("x", 1e39)
    with pytest.raises(gguf.GGUFError):
        w.add_array("x", ["a", 5], VT.STRING)
    with pytest.raises(gguf.GGUFError):
        w.add_tensor("q", [33], GGMLType.Q8_0, b"")  # not a multiple of the block
    w.add_tensor("a", [1], GGMLType.F32, b"\0" * 4)
    with pytest.raises(gguf.GGUFError):
        w.add_tensor("a", [1], GGMLType.F32, b"\0" * 4)  # duplicate name
    with pytest.raises(gguf.GGUFError):
        GGUFWriter(alignment=24)


def test_reader_rejects_bad_files(tmp_path):
    w = GGUFWriter()
    w.add_string("general.architecture", "llama")
    w.add_array("a", list(range(100)))
    w.add_tensor("t", [8], GGMLType.F32, b"\1" * 32)
    good = w.to_bytes()
    GGUFReader(good)
    with pytest.raises(gguf.GGUFError, match="magic"):
        GGUFReader(b"GGUX" + good[4:])
    with pytest.raises(gguf.GGUFError, match="version"):
        GGUFReader(good[:4] + struct.pack("<I", 1) + good[8:])
    for cut in (3, 10, 30, 60, 200, len(good) - 40):
        with pytest.raises(gguf.GGUFError):
            GGUFReader(good[:cut])
    p = tmp_path / "f.gguf"
    p.write_bytes(good)
    with GGUFReader(p) as r:
        assert r.get("general.architecture") == "llama"


# ===========================================================================
# gguf.py: tensors


def _expected_nbytes(ne, t):
    blck, size = gguf.GGML_BLOCK[t]
    return math.prod(ne) // blck * size


@need_np
@pytest.mark.parametrize("alignment", [32, 64, 4096])
def test_tensors_of_each_type_roundtrip(tmp_path, alignment):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 64)).astype(np.float32)
    w = GGUFWriter(tmp_path / "t.gguf", alignment=alignment)
    w.add_string("general.architecture", "test")
    w.add_tensor_array("f32", a, GGMLType.F32)
    w.add_tensor_array("f16", a, GGMLType.F16)
    w.add_tensor_array("bf16", a, GGMLType.BF16)
    w.add_tensor_array("q8", a, GGMLType.Q8_0)
    w.add_tensor_array("vec", a[0, :5])  # odd size: padding after it
    w.add_tensor("i32", [2, 2], GGMLType.I32, np.array([[1, 2], [3, -4]], dtype=np.int32))
    w.add_tensor("3d", [64, 3, 2], GGMLType.F32, lambda: (np.stack([a, a]) for _ in range(1)))
    w.write()
    r = GGUFReader(tmp_path / "t.gguf")
    assert r.alignment == alignment
    if alignment != 32:
        assert r.get("general.alignment") == alignment and r.fields["general.alignment"].type == VT.UINT32
    assert r.data_offset % alignment == 0
    byname = {t.name: t for t in r.tensors}
    for t in r.tensors:
        assert t.offset % alignment == 0
        assert t.nbytes == _expected_nbytes(t.ne, t.ggml_type)
    assert os.path.getsize(tmp_path / "t.gguf") % alignment == 0
    assert byname["f32"].ne == [64, 3] and byname["f32"].ggml_type == GGMLType.F32
    assert np.array_equal(r.tensor_array("f32"), a)
    assert np.array_equal(r.tensor_array("f16"), a.astype(np.float16))
    assert np.array_equal(gguf.bf16_bits_to_f32(r.tensor_array("bf16")), _bf16_ref(a))
    q = r.tensor_array("q8")
    assert q.shape == (3, 2 * 34)
    assert np.allclose(gguf.decode_q8_0(q, 64), a, atol=np.abs(a).max() / 127)
    assert np.array_equal(r.tensor_array("vec"), a[0, :5])
    assert r.tensor_array("i32").tolist() == [[1, 2], [3, -4]]
    assert byname["3d"].ne == [64, 3, 2] and np.array_equal(r.tensor_array("3d"), np.stack([a, a]))
    r.close()


def _bf16_ref(a):
    """Round to nearest even, in pure Python, one value at a time."""
    out = []
    for x in a.ravel().tolist():
        (u,) = struct.unpack("<I", struct.pack("<f", x))
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        out.append(struct.unpack("<f", struct.pack("<I", u << 16))[0])
    return np.array(out, dtype=np.float32).reshape(a.shape)


def test_streaming_sources_and_size_checks(tmp_path):
    p = tmp_path / "s.gguf"
    calls = []

    def gen():
        calls.append(1)
        yield b"\1" * 10
        yield bytearray(b"\2" * 6)

    w = GGUFWriter(p)
    w.add_tensor("a", [4], GGMLType.F32, gen)  # callable returning an iterator of chunks
    w.add_tensor("b", [3], GGMLType.I8, b"xyz")
    assert calls == []  # nothing consumed before write
    w.write()
    r = GGUFReader(p)
    assert bytes(r.tensor_bytes("a")) == b"\1" * 10 + b"\2" * 6
    assert bytes(r.tensor_bytes("b")) == b"xyz"
    r.close()
    # by hand, in pieces that do not follow tensor boundaries
    w = GGUFWriter(p)
    w.add_tensor("a", [4], GGMLType.F32)
    w.add_tensor("b", [3], GGMLType.I8)
    w.write_header()
    w.write_tensor_data(b"A" * 7)
    w.write_tensor_data(b"A" * 9 + b"BB")
    w.write_tensor_data(b"B")
    w.close()
    r = GGUFReader(p)
    assert bytes(r.tensor_bytes("a")) == b"A" * 16 and bytes(r.tensor_bytes("b")) == b"BBB"
    r.close()
    for bad in (b"\0" * 15, b"\0" * 17):
        w = GGUFWriter(p)
        w.add_tensor("a", [4], GGMLType.F32, bad)
        with pytest.raises(gguf.GGUFError):
            w.write()
        assert not p.exists()  # a failed write leaves no file


# ===========================================================================
# encoders


def _q8_ref_block(xs):
    """Q8_0 of one block in pure Python (C float semantics via struct)."""
    amax = max(abs(x) for x in xs)
    d = f32(amax / 127)
    inv = f32(1 / d) if d else 0.0
    qs = []
    for x in xs:
        v = f32(x * inv)
        qs.append(int(math.copysign(math.floor(abs(v) + 0.5), v)))
    return struct.pack("<e", d) + struct.pack("<32b", *qs)


@need_np
def test_q8_0_known_answers():
    # all ones: d = fp16(1/127) = 0x2008, every quant 127
    out = gguf.encode_q8_0(np.ones(32, dtype=np.float32))
    assert bytes(out) == bytes([0x08, 0x20]) + bytes([0x7F]) * 32
    # zeros: d = 0, quants 0
    assert bytes(gguf.encode_q8_0(np.zeros(32, dtype=np.float32))) == b"\0" * 34
    # halves round away from zero (C roundf), unlike numpy's round-half-even
    x = np.zeros(32, dtype=np.float32)
    x[:5] = [127, 2.5, -2.5, 0.5, -1.5]
    b = bytes(gguf.encode_q8_0(x))
    assert b[:2] == struct.pack("<e", 1.0)
    assert struct.unpack("<5b", b[2:7]) == (127, 3, -3, 1, -2)
    # random rows against the pure-Python reference, several blocks per row
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((4, 96)) * rng.uniform(0.01, 100, (4, 1))).astype(np.float32)
    enc = gguf.encode_q8_0(a)
    assert enc.shape == (4, 3 * 34)
    ref = b"".join(_q8_ref_block(a[r, c:c + 32].tolist()) for r in range(4) for c in range(0, 96, 32))
    assert bytes(enc) == ref
    with pytest.raises(gguf.GGUFError):
        gguf.encode_q8_0(np.ones(31, dtype=np.float32))


@need_np
def test_bf16_and_f16_encoders():
    x = np.array([1.0, -2.5, 1 + 2**-8, 1 + 3 * 2**-8, 3.4e38, float("inf"), float("nan")], dtype=np.float32)
    bits = gguf.encode_bf16(x)
    assert bits.dtype == np.dtype("<u2")
    assert bits[:6].tolist() == [0x3F80, 0xC020, 0x3F80, 0x3F82, 0x7F80, 0x7F80]  # ties to even
    assert np.isnan(gguf.bf16_bits_to_f32(bits)[6])
    assert gguf.encode_f16(x[:2]).tobytes() == struct.pack("<2e", 1.0, -2.5)


# ===========================================================================
# real vocabulary files


@need_vocab
def test_real_vocab_files_read_and_rewrite_identically():
    files = sorted(VOCAB.glob("ggml-vocab-*.gguf"))
    assert len(files) >= 5
    for p in files:
        r = GGUFReader(p)
        f = r.fields
        n = len(r.get("tokenizer.ggml.tokens"))
        assert f["tokenizer.ggml.tokens"].elem_type == VT.STRING
        assert f["tokenizer.ggml.token_type"].elem_type == VT.INT32 and len(f["tokenizer.ggml.token_type"].value) == n
        if "tokenizer.ggml.scores" in f:
            assert f["tokenizer.ggml.scores"].elem_type == VT.FLOAT32 and len(f["tokenizer.ggml.scores"].value) == n
        if "tokenizer.ggml.merges" in f:
            assert f["tokenizer.ggml.merges"].elem_type == VT.STRING
        for k in ("bos_token_id", "eos_token_id"):
            if f"tokenizer.ggml.{k}" in f:
                assert f[f"tokenizer.ggml.{k}"].type == VT.UINT32
        assert r.tensors == []
        # copy every key through the writer: the same bytes come out
        w = GGUFWriter()
        for fld in f.values():
            w.add_kv(fld.name, fld.value, fld.type, fld.elem_type)
        assert w.to_bytes() == p.read_bytes(), p.name
        r.close()


# ===========================================================================
# hf2gguf --vocab-only on the real tokenizers


def _convert_vocab(name: str, out: Path) -> GGUFReader:
    rc = hf2gguf.main(["--vocab-only", str(HFTOK / name), str(out)])
    assert rc == 0
    return GGUFReader(out)


@pytest.fixture(scope="module")
def qwen3_vocab(tmp_path_factory):
    if not HFTOK.is_dir():
        pytest.skip(f"no {HFTOK}")
    return _convert_vocab("qwen3", tmp_path_factory.mktemp("q") / "qwen3.gguf")


@pytest.fixture(scope="module")
def llama3_vocab(tmp_path_factory):
    if not HFTOK.is_dir():
        pytest.skip(f"no {HFTOK}")
    return _convert_vocab("llama3", tmp_path_factory.mktemp("l") / "llama3.gguf")


def _check_conventions(r: GGUFReader):
    """Same key names and types as llama.cpp's vocab files (e.g. gpt-2's)."""
    f = r.fields
    assert f["general.architecture"].type == VT.STRING
    assert f["tokenizer.ggml.model"].value == "gpt2"
    assert f["tokenizer.ggml.tokens"].elem_type == VT.STRING
    assert f["tokenizer.ggml.token_type"].elem_type == VT.INT32
    assert f["tokenizer.ggml.merges"].elem_type == VT.STRING
    assert "tokenizer.ggml.scores" not in f  # llama.cpp writes none for BPE
    for k, fld in f.items():
        if k.endswith("_token_id"):
            assert fld.type == VT.UINT32, k
        if k.startswith("tokenizer.ggml.add_"):
            assert fld.type == VT.BOOL, k
    if VOCAB.is_dir():
        ref = GGUFReader(VOCAB / "ggml-vocab-gpt-2.gguf")
        for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                  "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id"):
            assert ref.fields[k].type == f[k].type and ref.fields[k].elem_type == f[k].elem_type, k
        ref.close()


def _check_against_json(r: GGUFReader, name: str):
    tj = json.loads((HFTOK / name / "tokenizer.json").read_text(encoding="utf-8"))
    toks = r.get("tokenizer.ggml.tokens")
    for t, i in tj["model"]["vocab"].items():
        assert toks[i] == t
    types = r.get("tokenizer.ggml.token_type")
    for a in tj["added_tokens"]:
        assert toks[a["id"]] == a["content"]
        assert types[a["id"]] == (3 if a["special"] or a["content"].startswith("<|") else 4)
    merges = r.get("tokenizer.ggml.merges")
    m0 = tj["model"]["merges"][0]
    assert merges[0] == (m0 if isinstance(m0, str) else " ".join(m0))
    tc = json.loads((HFTOK / name / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert r.get("tokenizer.chat_template") == tc["chat_template"]


def test_vocab_only_qwen3(qwen3_vocab):
    r = qwen3_vocab
    _check_conventions(r)
    _check_against_json(r, "qwen3")
    assert r.get("general.architecture") == "qwen3moe"
    assert r.get("tokenizer.ggml.pre") == "qwen2"
    toks, types = r.get("tokenizer.ggml.tokens"), r.get("tokenizer.ggml.token_type")
    assert len(toks) == 151669 and len(types) == 151669
    assert len(r.get("tokenizer.ggml.merges")) == 151387
    assert toks[151643] == "<|endoftext|>" and types[151643] == 3
    assert toks[151645] == "<|im_end|>" and types[151645] == 3
    assert toks[151667] == "<think>" and types[151667] == 4  # added, not special
    assert toks[151659] == "<|fim_prefix|>" and types[151659] == 3  # not special, but looks special
    assert sum(1 for t in types if t == 3) == 20 and sum(1 for t in types if t == 4) == 6
    assert r.get("tokenizer.ggml.eos_token_id") == 151645
    assert r.get("tokenizer.ggml.padding_token_id") == 151643
    assert "tokenizer.ggml.bos_token_id" not in r.fields  # bos_token is null and there is no config.json
    assert r.get("tokenizer.ggml.add_bos_token") is False
    assert r.get("tokenizer.ggml.add_eos_token") is False
    assert "<|im_start|>" in r.get("tokenizer.chat_template")


def test_vocab_only_llama3(llama3_vocab):
    r = llama3_vocab
    _check_conventions(r)
    _check_against_json(r, "llama3")
    assert r.get("general.architecture") == "llama"
    assert r.get("tokenizer.ggml.pre") == "llama-bpe"
    toks, types = r.get("tokenizer.ggml.tokens"), r.get("tokenizer.ggml.token_type")
    assert len(toks) == 128256
    assert len(r.get("tokenizer.ggml.merges")) == 280147
    assert all(t == 3 for t in types[128000:]) and all(t == 1 for t in types[:128000])
    assert toks[128009] == "<|eot_id|>"
    assert r.get("tokenizer.ggml.bos_token_id") == 128000
    assert r.get("tokenizer.ggml.eos_token_id") == 128001
    assert r.get("tokenizer.ggml.add_bos_token") is True
    assert "<|start_header_id|>" in r.get("tokenizer.chat_template")


def test_vocab_only_needs_no_numpy(tmp_path, qwen3_vocab):
    """The exact command line the C tokenizer tests use, with numpy hidden:
    the same bytes as with numpy."""
    out = tmp_path / "q.gguf"
    code = ("import sys, runpy; sys.modules['numpy'] = None; "
            f"sys.argv = ['hf2gguf.py', '--vocab-only', {str(HFTOK / 'qwen3')!r}, {str(out)!r}]; "
            f"runpy.run_path({str(TOOLS / 'hf2gguf.py')!r}, run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == bytes(qwen3_vocab.buf)


# --- a pure-Python byte-level BPE over the converted vocabulary -------------


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _is_l(c):
    import unicodedata
    return unicodedata.category(c)[0] == "L"


def _is_n(c):
    import unicodedata
    return unicodedata.category(c)[0] == "N"


def _is_s(c):
    return c.isspace()


def _pretokenize(text: str, max_digits: int):
    """The qwen2 (max_digits=1) / llama-bpe (3) regex, written out by hand:
    (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,k}
    | ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "'" and i + 1 < n:
            low = text[i + 1:i + 3].lower()
            m = next((s for s in ("re", "ve", "ll") if low.startswith(s)), None) or \
                (low[:1] if low[:1] in ("s", "t", "m", "d") else None)
            if m:
                out.append(text[i:i + 1 + len(m)])
                i += 1 + len(m)
                continue
        if _is_l(c) or (c not in "\r\n" and not _is_n(c) and i + 1 < n and _is_l(text[i + 1])):
            j = i + 1
            while j < n and _is_l(text[j]):
                j += 1
            out.append(text[i:j])
            i = j
            continue
        if _is_n(c):
            j = i + 1
            while j < n and j - i < max_digits and _is_n(text[j]):
                j += 1
            out.append(text[i:j])
            i = j
            continue
        j = i + 1 if c == " " else i
        if j < n and not (_is_s(text[j]) or _is_l(text[j]) or _is_n(text[j])):
            while j < n and not (_is_s(text[j]) or _is_l(text[j]) or _is_n(text[j])):
                j += 1
            while j < n and text[j] in "\r\n":
                j += 1
            out.append(text[i:j])
            i = j
            continue
        # whitespace run
        j = i
        while j < n and _is_s(text[j]):
            j += 1
        run = text[i:j]
        last_nl = max(run.rfind("\r"), run.rfind("\n"))
        if last_nl >= 0:  # \s*[\r\n]+
            out.append(run[:last_nl + 1])
            i += last_nl + 1
            continue
        if j < n and j - i > 1:  # \s+(?!\S): leave the last space for the next token
            out.append(text[i:j - 1])
            i = j - 1
            continue
        out.append(run)
        i = j
    return out


class _BPE:
    def __init__(self, r: GGUFReader):
        toks = r.get("tokenizer.ggml.tokens")
        types = r.get("tokenizer.ggml.token_type")
        self.ids = {t: i for i, t in enumerate(toks) if types[i] == 1}
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(r.get("tokenizer.ggml.merges"))}
        self.b2u = _bytes_to_unicode()
        self.ignore_merges = r.get("tokenizer.ggml.pre") == "llama-bpe"
        self.max_digits = 3 if self.ignore_merges else 1

    def word(self, w: str):
        s = "".join(self.b2u[b] for b in w.encode("utf-8"))
        if self.ignore_merges and s in self.ids:
            return [self.ids[s]]
        parts = list(s)
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda k: self.ranks.get((parts[k], parts[k + 1]), 1 << 62))
            if (parts[best], parts[best + 1]) not in self.ranks:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return [self.ids[p] for p in parts]

    def encode(self, text: str):
        import unicodedata
        if not self.ignore_merges:
            text = unicodedata.normalize("NFC", text)  # qwen's normalizer
        return [i for w in _pretokenize(text, self.max_digits) for i in self.word(w)]


def _vectors(name: str):
    base = VOCAB / "vectors-only"
    inp = (base / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outs = (base / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    return inp, outs


@pytest.mark.parametrize("fixture,name", [("qwen3_vocab", "qwen2"), ("llama3_vocab", "llama-bpe")])
def test_tokens_and_merges_reproduce_the_vectors(request, fixture, name):
    """A small reference BPE over the converted tokens/merges gives the
    expected ids: the vocabulary, its order and the merges are right."""
    if not (VOCAB / "vectors-only" / f"ggml-vocab-{name}.gguf.inp").is_file():
        pytest.skip("no vectors")
    bpe = _BPE(request.getfixturevalue(fixture))
    inp, outs = _vectors(name)
    if inp and inp[-1].endswith("\n__ggml_vocab_test__"):
        inp[-1] = inp[-1][: -len("\n__ggml_vocab_test__")]
    bad = []
    for k, s in enumerate(inp):
        exp = [int(x) for x in outs[k].split()]
        got = bpe.encode(s)
        if got != exp:
            bad.append((k, s[:40], got[:10], exp[:10]))
    assert not bad, bad[:3]


# ===========================================================================
# SentencePiece path (Mixtral): tokenizer.model built from llama-spm.gguf


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_len(field: int, payload: bytes) -> bytes:
    return _pb_varint(field << 3 | 2) + _pb_varint(len(payload)) + payload


def _spm_model(pieces) -> bytes:
    out = [_pb_len(2, _pb_len(1, b"trainer") + _pb_varint(3 << 3) + _pb_varint(2))]  # trainer_spec (ignored)
    for piece, score, ptype in pieces:
        msg = _pb_len(1, piece.encode("utf-8")) + _pb_varint(2 << 3 | 5) + struct.pack("<f", score)
        if ptype != 1:
            msg += _pb_varint(3 << 3) + _pb_varint(ptype)
        out.append(_pb_len(1, msg))
    return b"".join(out)


@need_vocab
def test_sentencepiece_vocab_matches_llama_cpp(tmp_path):
    ref = GGUFReader(VOCAB / "ggml-vocab-llama-spm.gguf")
    toks = ref.get("tokenizer.ggml.tokens")
    scores = ref.get("tokenizer.ggml.scores")
    types = ref.get("tokenizer.ggml.token_type")
    d = tmp_path / "spm"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(_spm_model(zip(toks, scores, types)))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "unk_token": "<unk>", "add_bos_token": True}))
    out = tmp_path / "spm.gguf"
    assert hf2gguf.main(["--vocab-only", "--arch", "llama", str(d), str(out)]) == 0
    r = GGUFReader(out)
    assert r.get("tokenizer.ggml.model") == "llama" and r.get("tokenizer.ggml.pre") == "default"
    assert r.get("tokenizer.ggml.tokens") == toks
    assert list(r.get("tokenizer.ggml.scores")) == list(scores)
    assert list(r.get("tokenizer.ggml.token_type")) == list(types)
    for k in ("bos_token_id", "eos_token_id", "unknown_token_id", "add_bos_token", "add_eos_token"):
        assert r.get(f"tokenizer.ggml.{k}") == ref.get(f"tokenizer.ggml.{k}"), k
        assert r.fields[f"tokenizer.ggml.{k}"].type == ref.fields[f"tokenizer.ggml.{k}"].type


def test_pre_tokenizer_identification():
    split = lambda rx: {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    assert hf2gguf.identify_pre({"pre_tokenizer": split(hf2gguf._RE_QWEN2)}) == "qwen2"
    assert hf2gguf.identify_pre({"pre_tokenizer": split(hf2gguf._RE_LLAMA3)}) == "llama-bpe"
    gpt2 = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    assert hf2gguf.identify_pre(gpt2) == "gpt-2"
    assert hf2gguf.identify_pre(gpt2, arch="olmoe") == "olmo"
    assert hf2gguf.identify_pre({"pre_tokenizer": split("x+")}) == "default"


# ===========================================================================
# weights: tiny synthetic checkpoints of the four architectures


ST_DT = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def _write_safetensors(path: Path, tensors: dict, dtype: str = "F32"):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        if dtype == "BF16":
            b = gguf.f32_to_bf16_bits(a).tobytes()
        else:
            b = np.ascontiguousarray(a, dtype=ST_DT[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _tiny_tokenizer(d: Path, arch: str):
    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: i for i, b in enumerate(range(256))}
    merges = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"]]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    added = [{"id": 259, "content": "<|endoftext|>", "special": True, "normalized": False},
             {"id": 260, "content": "<think>", "special": False, "normalized": False}]
    pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": hf2gguf._RE_QWEN2}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    if arch in ("olmoe",):
        pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tj = {"version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": pre,
          "post_processor": None, "decoder": {"type": "ByteLevel"},
          "model": {"type": "BPE", "vocab": vocab, "merges": merges}}
    (d / "tokenizer.json").write_text(json.dumps(tj))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "pad_token": None, "chat_template": "{{ messages }}"}))


D, NH, NKV, HD, FF, SFF, NE, NL, V = 64, 4, 2, 16, 32, 64, 4, 2, 264


def _tiny_model(d: Path, arch: str, fused=False, tied=False, dtype="F32", seed=0):
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)
    hf_arch = {"qwen3moe": "Qwen3MoeForCausalLM", "qwen2moe": "Qwen2MoeForCausalLM",
               "llama": "MixtralForCausalLM", "olmoe": "OlmoeForCausalLM"}[arch]
    cfg = {"architectures": [hf_arch], "num_hidden_layers": NL, "hidden_size": D, "num_attention_heads": NH,
           "num_key_value_heads": NKV, "vocab_size": V, "max_position_embeddings": 4096,
           "rms_norm_eps": 1e-6, "rope_theta": 1e6, "num_experts_per_tok": 2, "tie_word_embeddings": tied,
           "bos_token_id": 259, "eos_token_id": 259}
    if arch == "llama":
        cfg.update(num_local_experts=NE, intermediate_size=FF)
    else:
        cfg.update(num_experts=NE)
    if arch == "qwen3moe":
        cfg.update(head_dim=HD, moe_intermediate_size=FF, intermediate_size=128, norm_topk_prob=True,
                   decoder_sparse_step=1, mlp_only_layers=[])
    if arch == "qwen2moe":
        cfg.update(moe_intermediate_size=FF, shared_expert_intermediate_size=SFF, intermediate_size=128)
    if arch == "olmoe":
        cfg.update(intermediate_size=FF, norm_topk_prob=False, rms_norm_eps=1e-5)
    t = {"model.embed_tokens.weight": r(V, D), "model.norm.weight": r(D)}
    if not tied:
        t["lm_head.weight"] = r(V, D)
    for i in range(NL):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = r(D)
        t[p + "post_attention_layernorm.weight"] = r(D)
        t[p + "self_attn.q_proj.weight"] = r(NH * HD, D)
        t[p + "self_attn.k_proj.weight"] = r(NKV * HD, D)
        t[p + "self_attn.v_proj.weight"] = r(NKV * HD, D)
        t[p + "self_attn.o_proj.weight"] = r(D, NH * HD)
        t[p + "self_attn.rotary_emb.inv_freq"] = r(HD // 2)  # old checkpoints: ignored
        if arch == "qwen2moe":
            for x, n in (("q", NH), ("k", NKV), ("v", NKV)):
                t[p + f"self_attn.{x}_proj.bias"] = r(n * HD)
        if arch == "qwen3moe":
            t[p + "self_attn.q_norm.weight"] = r(HD)
            t[p + "self_attn.k_norm.weight"] = r(HD)
        if arch == "olmoe":
            t[p + "self_attn.q_norm.weight"] = r(NH * HD)
            t[p + "self_attn.k_norm.weight"] = r(NKV * HD)
        moe = p + ("block_sparse_moe." if arch == "llama" else "mlp.")
        t[moe + "gate.weight"] = r(NE, D)
        if fused:
            t[moe + "experts.gate_up_proj"] = r(NE, 2 * FF, D)
            t[moe + "experts.down_proj"] = r(NE, D, FF)
        else:
            names = ("w1", "w3", "w2") if arch == "llama" else ("gate_proj", "up_proj", "down_proj")
            for e in range(NE):
                t[moe + f"experts.{e}.{names[0]}.weight"] = r(FF, D)
                t[moe + f"experts.{e}.{names[1]}.weight"] = r(FF, D)
                t[moe + f"experts.{e}.{names[2]}.weight"] = r(D, FF)
        if arch == "qwen2moe":
            t[p + "mlp.shared_expert.gate_proj.weight"] = r(SFF, D)
            t[p + "mlp.shared_expert.up_proj.weight"] = r(SFF, D)
            t[p + "mlp.shared_expert.down_proj.weight"] = r(D, SFF)
            t[p + "mlp.shared_expert_gate.weight"] = r(1, D)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    # two shards with an index, as large checkpoints come
    names = list(t)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    wmap = {}
    for fn, ns in shards.items():
        _write_safetensors(d / fn, {n: t[n] for n in ns}, dtype)
        wmap.update({n: fn for n in ns})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    _tiny_tokenizer(d, arch)
    if dtype == "BF16":  # what the converter sees
        t = {k: gguf.bf16_bits_to_f32(gguf.f32_to_bf16_bits(v)) for k, v in t.items()}
    return cfg, t


def _perm_ref(w, n_head):
    """llama.cpp's Q/K row order, from its definition: within each head of
    d rows, new row 2*i + j is old row j*d/2 + i."""
    d = w.shape[0] // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for i in range(d // 2):
            for j in range(2):
                out[h * d + 2 * i + j] = w[h * d + j * (d // 2) + i]
    return out


def _read(r: GGUFReader, name: str):
    t = r.tensor(name)
    a = r.tensor_array(t)
    if t.ggml_type == GGMLType.BF16:
        return gguf.bf16_bits_to_f32(a)
    if t.ggml_type == GGMLType.Q8_0:
        return gguf.decode_q8_0(a, t.ne[0]).reshape(t.shape)
    return a.astype(np.float32)


@need_np
@pytest.mark.parametrize("arch", ["qwen3moe", "qwen2moe", "llama", "olmoe"])
def test_convert_each_arch_f32(tmp_path, arch):
    cfg, t = _tiny_model(tmp_path / "m", arch)
    out = tmp_path / "m.gguf"
    assert hf2gguf.main(["--outtype", "f32", str(tmp_path / "m"), str(out)]) == 0
    r = GGUFReader(out)
    A = arch
    assert r.get("general.architecture") == arch
    assert r.get(f"{A}.block_count") == NL and r.get(f"{A}.embedding_length") == D
    assert r.get(f"{A}.attention.head_count") == NH and r.get(f"{A}.attention.head_count_kv") == NKV
    assert r.get(f"{A}.expert_count") == NE and r.get(f"{A}.expert_used_count") == 2
    assert r.get(f"{A}.context_length") == 4096
    assert r.get(f"{A}.rope.freq_base") == 1e6
    assert r.fields[f"{A}.attention.layer_norm_rms_epsilon"].type == VT.FLOAT32
    assert r.fields[f"{A}.block_count"].type == VT.UINT32
    assert r.get("general.file_type") == 0
    assert r.get(f"{A}.expert_weights_norm") is {"qwen3moe": True, "qwen2moe": False, "llama": True, "olmoe": False}[arch]
    if arch == "qwen3moe":
        assert r.get(f"{A}.attention.key_length") == HD and r.get(f"{A}.attention.value_length") == HD
        assert r.get(f"{A}.expert_feed_forward_length") == FF
    if arch == "qwen2moe":
        assert r.get(f"{A}.expert_feed_forward_length") == FF
        assert r.get(f"{A}.expert_shared_feed_forward_length") == SFF
    if arch in ("llama", "olmoe"):
        assert r.get(f"{A}.feed_forward_length") == FF
    if arch == "llama":
        assert r.get("llama.vocab_size") == V and r.get("llama.rope.dimension_count") == HD
    # vocabulary padded to vocab_size; config.json supplies bos
    toks = r.get("tokenizer.ggml.tokens")
    assert len(toks) == V and toks[V - 1] == f"[PAD{V - 1}]" and r.get("tokenizer.ggml.token_type")[V - 1] == 5
    assert r.get("tokenizer.ggml.bos_token_id") == 259 and r.get("tokenizer.ggml.eos_token_id") == 259
    assert r.get("tokenizer.ggml.pre") == ("olmo" if arch == "olmoe" else "qwen2")

    names = {x.name for x in r.tensors}
    assert all(x.ggml_type == GGMLType.F32 for x in r.tensors)
    assert np.array_equal(_read(r, "token_embd.weight"), t["model.embed_tokens.weight"])
    assert r.tensor("token_embd.weight").ne == [D, V]
    assert np.array_equal(_read(r, "output.weight"), t["lm_head.weight"])
    assert np.array_equal(_read(r, "output_norm.weight"), t["model.norm.weight"])
    for i in range(NL):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        assert np.array_equal(_read(r, b + "attn_norm.weight"), t[p + "input_layernorm.weight"])
        assert np.array_equal(_read(r, b + "ffn_norm.weight"), t[p + "post_attention_layernorm.weight"])
        q, k = t[p + "self_attn.q_proj.weight"], t[p + "self_attn.k_proj.weight"]
        if arch == "llama":  # llama.cpp's RoPE row permutation, llama only
            q, k = _perm_ref(q, NH), _perm_ref(k, NKV)
        assert np.array_equal(_read(r, b + "attn_q.weight"), q)
        assert np.array_equal(_read(r, b + "attn_k.weight"), k)
        assert r.tensor(b + "attn_q.weight").ne == [D, NH * HD]
        assert np.array_equal(_read(r, b + "attn_v.weight"), t[p + "self_attn.v_proj.weight"])
        assert np.array_equal(_read(r, b + "attn_output.weight"), t[p + "self_attn.o_proj.weight"])
        moe = p + ("block_sparse_moe." if arch == "llama" else "mlp.")
        assert np.array_equal(_read(r, b + "ffn_gate_inp.weight"), t[moe + "gate.weight"])
        assert r.tensor(b + "ffn_gate_inp.weight").ne == [D, NE]
        hfn = ("w1", "w3", "w2") if arch == "llama" else ("gate_proj", "up_proj", "down_proj")
        for part, hn in zip(("gate", "up", "down"), hfn):
            x = r.tensor(b + f"ffn_{part}_exps.weight")
            assert x.ne == ([FF, D, NE] if part == "down" else [D, FF, NE])
            exp = np.stack([t[moe + f"experts.{e}.{hn}.weight"] for e in range(NE)])
            assert np.array_equal(_read(r, x), exp)
        if arch in ("qwen3moe", "olmoe"):
            assert np.array_equal(_read(r, b + "attn_q_norm.weight"), t[p + "self_attn.q_norm.weight"])
            assert np.array_equal(_read(r, b + "attn_k_norm.weight"), t[p + "self_attn.k_norm.weight"])
        else:
            assert b + "attn_q_norm.weight" not in names
        if arch == "qwen2moe":
            assert np.array_equal(_read(r, b + "attn_q.bias"), t[p + "self_attn.q_proj.bias"])
            assert np.array_equal(_read(r, b + "attn_k.bias"), t[p + "self_attn.k_proj.bias"])
            assert np.array_equal(_read(r, b + "attn_v.bias"), t[p + "self_attn.v_proj.bias"])
            sg = r.tensor(b + "ffn_gate_inp_shexp.weight")
            assert sg.ne == [D]
            assert np.array_equal(_read(r, sg), t[p + "mlp.shared_expert_gate.weight"][0])
            for part in ("gate", "up", "down"):
                assert np.array_equal(_read(r, b + f"ffn_{part}_shexp.weight"),
                                      t[p + f"mlp.shared_expert.{part}_proj.weight"])
        else:
            assert not any("shexp" in n for n in names)
    assert not any("rotary" in n for n in names)


@need_np
def test_convert_fused_experts_tied_q8_0(tmp_path):
    """transformers-v5 fused expert tensors, tied embeddings, Q8_0 output."""
    cfg, t = _tiny_model(tmp_path / "m", "qwen3moe", fused=True, tied=True)
    out = tmp_path / "m.gguf"
    assert hf2gguf.main(["--outtype", "q8_0", str(tmp_path / "m"), str(out)]) == 0
    r = GGUFReader(out)
    assert r.get("general.file_type") == 7 and r.get("general.quantization_version") == 2
    names = {x.name: x for x in r.tensors}
    assert "output.weight" not in names  # tied
    for n, x in names.items():
        if n.endswith("_norm.weight") or ".ffn_gate_inp." in n or len(x.ne) == 1:
            assert x.ggml_type == GGMLType.F32, n
        else:
            assert x.ggml_type == GGMLType.Q8_0, n
    gu = t["model.layers.1.mlp.experts.gate_up_proj"]
    for part, sl in (("gate", slice(0, FF)), ("up", slice(FF, 2 * FF))):
        x = names[f"blk.1.ffn_{part}_exps.weight"]
        assert x.ne == [D, FF, NE]
        ref = gu[:, sl, :]
        assert bytes(r.tensor_bytes(x)) == gguf.encode_q8_0(ref).tobytes()
    x = names["blk.1.ffn_down_exps.weight"]
    assert x.ne == [FF, D, NE]
    assert bytes(r.tensor_bytes(x)) == gguf.encode_q8_0(t["model.layers.1.mlp.experts.down_proj"]).tobytes()


@need_np
@pytest.mark.parametrize("outtype,gt", [("f16", GGMLType.F16), ("bf16", GGMLType.BF16)])
def test_convert_bf16_checkpoint(tmp_path, outtype, gt):
    cfg, t = _tiny_model(tmp_path / "m", "llama", dtype="BF16")
    out = tmp_path / "m.gguf"
    assert hf2gguf.main(["--outtype", outtype, str(tmp_path / "m"), str(out)]) == 0
    r = GGUFReader(out)
    assert r.tensor("blk.0.ffn_up_exps.weight").ggml_type == gt
    assert r.tensor("blk.0.attn_norm.weight").ggml_type == GGMLType.F32
    assert r.get("tokenizer.ggml.model") == "gpt2"
    ref = np.stack([t[f"model.layers.0.block_sparse_moe.experts.{e}.w3.weight"] for e in range(NE)])
    got = _read(r, "blk.0.ffn_up_exps.weight")
    if outtype == "bf16":
        assert np.array_equal(got, ref)  # bf16 in, bf16 out: exact
    else:
        assert np.array_equal(got, ref.astype(np.float16).astype(np.float32))
    assert np.array_equal(_read(r, "blk.1.attn_k.weight"),
                          _perm_ref(t["model.layers.1.self_attn.k_proj.weight"], NKV).astype(np.float16))


@need_np
def test_convert_errors(tmp_path, capsys):
    cfg, t = _tiny_model(tmp_path / "m", "qwen2moe")
    # an expert missing
    idx = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    c = json.loads((tmp_path / "m" / "config.json").read_text())
    c["num_experts"] = NE + 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    assert hf2gguf.main([str(tmp_path / "m"), str(tmp_path / "o.gguf")]) == 1
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "o.gguf").exists()
    c["num_experts"] = NE
    c["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(c))
    assert hf2gguf.main([str(tmp_path / "m"), str(tmp_path / "o.gguf")]) == 1
    assert "not supported" in capsys.readouterr().err
    assert idx["weight_map"]


def test_tensor_type_rules():
    tt = hf2gguf._tensor_type
    assert tt("blk.0.attn_norm.weight", [64], "q8_0") == GGMLType.F32
    assert tt("blk.0.attn_q_norm.weight", [128], "bf16") == GGMLType.F32
    assert tt("blk.0.attn_q.bias", [64], "f16") == GGMLType.F32
    assert tt("blk.0.ffn_gate_inp.weight", [64, 8], "q8_0") == GGMLType.F32
    assert tt("blk.0.ffn_gate_inp_shexp.weight", [64], "q8_0") == GGMLType.F32
    assert tt("blk.0.ffn_up_exps.weight", [64, 32, 8], "q8_0") == GGMLType.Q8_0
    assert tt("blk.0.ffn_down_exps.weight", [48, 64, 8], "q8_0") == GGMLType.F16  # 48 % 32
    assert tt("token_embd.weight", [64, 100], "bf16") == GGMLType.BF16
    assert tt("output.weight", [64, 100], "f32") == GGMLType.F32
