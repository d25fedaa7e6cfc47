"""numpygpt.io.safetensors: bit-identical round trips, and every corrupt file refused with ValueError.
NumPy only; the comparison with the `safetensors` package itself is in test_oracle.py."""
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from numpygpt.io import safetensors as sft

NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def any_array(draw, dtypes=tuple(NUMPY_DTYPES.values())):
    """Any bit pattern of any supported dtype: NaN payloads, -0.0, inf included."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(shapes)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = draw(st.binary(min_size=n, max_size=n))
    if dtype == np.bool_:
        raw = bytes(b & 1 for b in raw)                 # bool bytes are 0 or 1
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8).filter(
    lambda s: s != "__metadata__")
tensor_dicts = st.dictionaries(names, any_array(), max_size=5)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def write(tmp_dir, data, name="t.safetensors"):
    path = os.path.join(tmp_dir, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


# ---- round trips --------------------------------------------------------------------------------
@given(tensors=tensor_dicts,
       metadata=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
def test_round_trip_is_bit_identical(tmp_path_factory, tensors, metadata):
    path = str(tmp_path_factory.mktemp("rt") / "x.safetensors")
    sft.save_file(tensors, path, metadata=metadata)
    for copy in (True, False):
        out, meta = sft.load_file(path, copy=copy)
        assert meta == metadata
        assert sorted(out) == sorted(tensors)
        for k in tensors:
            assert same_bits(out[k], tensors[k]), k
    out, meta = sft.load(sft.dumps(tensors, metadata))
    assert all(same_bits(out[k], tensors[k]) for k in tensors) and meta == metadata


def test_every_dtype_round_trips_with_its_name(tmp_path):
    tensors = {name: np.arange(6).astype(dt).reshape(2, 3) for name, dt in NUMPY_DTYPES.items()}
    tensors["BOOL"] = np.array([[True, False, True], [False, False, True]])
    path = tmp_path / "all.safetensors"
    sft.save_file(tensors, path)
    entries, _ = sft.read_header(path)
    assert {k: e[0] for k, e in entries.items()} == {k: k for k in NUMPY_DTYPES}
    out, _ = sft.load_file(path)
    assert all(same_bits(out[k], tensors[k]) for k in tensors)
    assert all(out[k].flags.writeable for k in out)
    view, _ = sft.load_file(path, copy=False)
    assert not view["F32"].flags.writeable


@given(bits=hnp.arrays(np.uint16, shapes))
def test_bf16_round_trip_is_bit_identical(bits):
    """float32 values exactly representable in bf16 (low 16 bits zero) survive BF16 bit for bit."""
    x = (bits.astype(np.uint32) << 16).view(np.float32)
    data = sft.dumps({"w": x}, dtypes={"w": "BF16"})
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert header["w"]["dtype"] == "BF16" and header["w"]["data_offsets"] == [0, 2 * x.size]
    assert data[-2 * x.size:] == bits.astype("<u2").tobytes() or x.size == 0
    out, _ = sft.load(data)
    assert same_bits(out["w"], x)


def test_bf16_rounds_to_nearest_even():
    # float32 bits -> expected bf16 bits, worked out by hand
    cases = {0x3F800000: 0x3F80,    # 1.0
             0x3F808000: 0x3F80,    # 1 + 2^-8: a tie, 0x3F80 is even -> down
             0x3F818000: 0x3F82,    # 1 + 3*2^-8: a tie, 0x3F81 is odd -> up
             0x3F808001: 0x3F81,    # just above the tie -> up
             0x3F807FFF: 0x3F80,    # just below -> down
             0x80000000: 0x8000,    # -0.0
             0x7F800000: 0x7F80,    # inf
             0x7F7FFFFF: 0x7F80}    # float32 max rounds past bf16 max -> inf
    x = np.array(list(cases), dtype=np.uint32).view(np.float32)
    assert sft.float32_to_bf16(x).tolist() == list(cases.values())
    nan = np.array([0x7F800001, 0xFFC00000], dtype=np.uint32).view(np.float32)
    assert np.isnan(sft.bf16_to_float32(sft.float32_to_bf16(nan))).all()


def test_file_layout_matches_the_format():
    tensors = {"b": np.array([1.0, 2.0], dtype=np.float32), "a": np.arange(3, dtype=np.int64)}
    data = sft.dumps(tensors, {"format": "pt"})
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + n]
    assert (8 + n) % 8 == 0 and header == header.rstrip(b" ") + b" " * (len(header) - len(header.rstrip(b" ")))
    parsed = json.loads(header)
    assert list(parsed) == ["__metadata__", "a", "b"]                      # sorted names
    assert parsed["a"] == {"dtype": "I64", "shape": [3], "data_offsets": [0, 24]}
    assert parsed["b"] == {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]}
    assert data[8 + n:] == struct.pack("<3q", 0, 1, 2) + struct.pack("<2f", 1.0, 2.0)
    # deterministic: insertion order and repetition change nothing
    assert sft.dumps(dict(reversed(list(tensors.items()))), {"format": "pt"}) == data


def test_big_endian_and_non_contiguous_input_is_written_little_endian():
    x = np.arange(12, dtype=">f8").reshape(3, 4).T                         # big-endian, transposed
    out, _ = sft.load(sft.dumps({"x": x}))
    assert out["x"].dtype == np.dtype("<f8") and np.array_equal(out["x"], x)


def test_unsupported_inputs_to_the_writer():
    with pytest.raises(ValueError, match="complex"):
        sft.dumps({"z": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(ValueError, match="only floats become BF16"):
        sft.dumps({"i": np.zeros(2, dtype=np.int32)}, dtypes={"i": "BF16"})
    with pytest.raises(ValueError, match="not in tensors"):
        sft.dumps({"a": np.zeros(1)}, dtypes={"b": "BF16"})
    with pytest.raises(ValueError, match="metadata"):
        sft.dumps({"a": np.zeros(1)}, metadata={"k": 1})
    with pytest.raises(ValueError, match="not allowed"):
        sft.dumps({"__metadata__": np.zeros(1)})


def test_save_file_leaves_no_temporary_behind(tmp_path):
    sft.save_file({"a": np.zeros(3)}, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == ["m.safetensors"]


# ---- corrupt and hostile files ------------------------------------------------------------------
VALID = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(4, dtype=np.int64),
         "c": np.ones(3, dtype=np.float16)}


def valid_parts():
    data = sft.dumps(VALID, {"format": "pt"})
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def assemble(header, body):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def refuse(data, tmp_dir, match=None):
    """Both readers refuse the bytes with ValueError (and read_header, if the header is bad)."""
    with pytest.raises(ValueError, match=match):
        sft.load(data)
    with pytest.raises(ValueError, match=match):
        sft.load_file(write(tmp_dir, data))


def test_valid_parts_are_valid():
    header, body = valid_parts()
    out, _ = sft.load(assemble(header, body))
    assert all(same_bits(out[k], VALID[k]) for k in VALID)


@given(cut=st.integers(0, 10_000))
def test_truncated(tmp_path_factory, cut):
    data = sft.dumps(VALID)
    refuse(data[:cut % len(data)], tmp_path_factory.mktemp("cut"))


@given(extra=st.binary(min_size=1, max_size=16))
def test_trailing_bytes(tmp_path_factory, extra):
    refuse(sft.dumps(VALID) + extra, tmp_path_factory.mktemp("tail"), match="end at")


@given(n=st.one_of(st.integers(sft.MAX_HEADER_BYTES + 1, 2**64 - 1),
                  st.integers(len(sft.dumps(VALID)) - 7, sft.MAX_HEADER_BYTES)))
def test_huge_header_length(tmp_path_factory, n):
    """More than the cap, or more than the file holds: refused before anything is read."""
    data = sft.dumps(VALID)
    refuse(n.to_bytes(8, "little") + data[8:], tmp_path_factory.mktemp("len"),
           match="exceeds the cap|past the end")


@given(text=st.binary(max_size=40))
def test_header_that_is_not_a_json_object(tmp_path_factory, text):
    try:
        ok = isinstance(json.loads(text), dict)
    except ValueError:
        ok = False
    if not ok:          # an empty object is a valid (empty) file when there is no data
        refuse(assemble(text, b"\0" * 8), tmp_path_factory.mktemp("json"))


@pytest.mark.parametrize("text,match", [
    (b"\xff\xfe{}", "UTF-8"), (b"[1, 2]", "JSON object"), (b'{"a": NaN}', "constant"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|JSON"),
    (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     b'"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', "duplicate"),
    (b'{"__metadata__": {"format": 1}}', "must be a string"),
    (b'{"__metadata__": [1]}', "must be an object"),
])
def test_bad_headers(tmp_path, text, match):
    refuse(assemble(text, b"\0" * 8), tmp_path, match)


def corrupt(kind, k, data):
    """A mutation of the valid header that must be refused, and the reason expected."""
    header, body = valid_parts()
    name = data.draw(st.sampled_from(sorted(VALID)))
    info = header[name]
    b, e = info["data_offsets"]
    if kind == "out of range":
        info["data_offsets"] = data.draw(st.sampled_from([[b, len(body) + k], [-k, e], [e, b - k]]))
        return header, body, "outside the data block"
    if kind == "overlap":          # move a later tensor back by k bytes, keeping its length
        other = data.draw(st.sampled_from([n for n in VALID if header[n]["data_offsets"][0] > 0]))
        ob, oe = header[other]["data_offsets"]
        k = min(k, ob)
        header[other]["data_offsets"] = [ob - k, oe - k]
        return header, body, "overlaps|gap|end at"
    if kind == "gap":              # shift every tensor from `name` on by k bytes, and grow the body
        for info in header.values():
            if "data_offsets" in info and info["data_offsets"][0] >= b:
                info["data_offsets"] = [o + k for o in info["data_offsets"]]
        return header, body + b"\0" * k, "gap"
    if kind == "byte count":
        info["shape"] = data.draw(st.sampled_from([info["shape"] + [k + 1], [s + k for s in info["shape"]],
                                                   [2**40, 2**40, 2**40]]))
        return header, body, "needs"
    if kind == "unknown dtype":
        info["dtype"] = data.draw(st.sampled_from(["F128", "f32", "", "C64", 7, None]))
        return header, body, "unknown dtype"
    if kind == "negative shape":
        info["shape"] = [-k] + info["shape"]
        return header, body, "non-negative"
    if kind == "bad types":
        field, value = data.draw(st.sampled_from([("shape", "2"), ("shape", [1.0]), ("shape", [True]),
                                                  ("data_offsets", [0]), ("data_offsets", [0.0, 4.0]),
                                                  ("data_offsets", None)]))
        info[field] = value
        return header, body, "must be"
    if kind == "extra key":
        info["extra"] = 1
        return header, body, "exactly the keys"
    raise AssertionError(kind)


@given(kind=st.sampled_from(["out of range", "overlap", "gap", "byte count", "unknown dtype",
                             "negative shape", "bad types", "extra key"]),
       k=st.integers(1, 64), data=st.data())
def test_corrupt_headers_are_refused(tmp_path_factory, kind, k, data):
    header, body, match = corrupt(kind, k, data)
    refuse(assemble(header, body), tmp_path_factory.mktemp("bad"), match)


def test_too_short_and_empty(tmp_path):
    refuse(b"", tmp_path, "too short")
    refuse(b"\x02\0\0", tmp_path, "too short")


def test_empty_file_of_no_tensors_is_valid(tmp_path):
    assert sft.load_file(write(tmp_path, sft.dumps({}))) == ({}, None)
