"""Safetensors, read and written in pure NumPy, validated before it is trusted.

The format (https://github.com/huggingface/safetensors):

    [8 bytes]  N, unsigned little-endian: the length of the header
    [N bytes]  a UTF-8 JSON object:
                 {"__metadata__": {"key": "value", ...},            optional, str -> str
                  "name": {"dtype": "F32", "shape": [768, 2304],
                           "data_offsets": [begin, end]}, ...}
               (padded with spaces so that the data starts 8-byte aligned)
    [rest]     the data: every tensor's raw little-endian, C-order bytes at
               [begin, end) counted from the start of this block

A file is a claim made by whoever wrote it. Before a single tensor is built we
check: the header length fits the file and a 100 MB cap; the header is UTF-8 JSON
holding an object with no duplicate names; every dtype is known, every shape a list
of non-negative ints, every data_offsets a pair of ints; sorted by offset, the
tensors tile the data block exactly (start at 0, no gap, no overlap, end at its
end); and each tensor's byte count is prod(shape) * itemsize. Anything else raises
ValueError saying why. Since every tensor then lies inside the bytes that really
are in the file, nothing is allocated because a header merely says so.

BF16 (bfloat16: the top 16 bits of a float32) has no NumPy dtype: it is read as
float32 (exact), and written from float32 by rounding to nearest even.
"""
import json
import math
import os
import tempfile

import numpy as np

MAX_HEADER_BYTES = 100_000_000          # the reference implementation's cap
METADATA_KEY = "__metadata__"

# safetensors dtype -> NumPy dtype of the bytes on disk (always little-endian)
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),            # raw bits; upcast to float32 on read
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# NumPy kind+itemsize -> safetensors dtype, for writing
_NAME_OF = {(np.dtype(v).kind, np.dtype(v).itemsize): k for k, v in DTYPES.items() if k != "BF16"}


# ---- bfloat16 ---------------------------------------------------------------------------------
def bf16_to_float32(bits):
    """uint16 bfloat16 bits -> float32: the bits are the top half of a float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x):
    """float32 -> uint16 bfloat16 bits, rounding to nearest, ties to even (as PyTorch).
    NaN stays NaN (a quiet NaN of the same sign); values past the bf16 range round to inf."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (u >> 16) & 1                                     # ties go to the even upper half
    rounded = ((u + np.uint32(0x7FFF) + lsb) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    return np.where(nan, ((u >> 16) | 0x0040).astype(np.uint16), rounded)


# ---- reading ----------------------------------------------------------------------------------
def _reject_duplicates(pairs):
    d = {}
    for key, value in pairs:
        if key in d:
            raise ValueError(f"duplicate key {key!r} in the JSON header")
        d[key] = value
    return d


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name} in the header")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def parse_header(header_bytes, data_size):
    """The JSON header (bytes) and the size of the data block -> (entries, metadata).
    entries: name -> (dtype string, shape tuple, begin, end), validated against data_size."""
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"header is not valid UTF-8: {e}") from None
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicates,
                            parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("header JSON is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"header must be a JSON object, got {type(header).__name__}")

    metadata = header.pop(METADATA_KEY, None)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ValueError(f"{METADATA_KEY} must be an object, got {type(metadata).__name__}")
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise ValueError(f"{METADATA_KEY}[{k!r}] must be a string, got {v!r}")

    entries = {}
    for name, info in header.items():
        where = f"tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            got = sorted(info) if isinstance(info, dict) else type(info).__name__
            raise ValueError(f"{where}: expected exactly the keys dtype, shape, data_offsets, "
                             f"got {got}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ValueError(f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise ValueError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) for o in offsets)):
            raise ValueError(f"{where}: data_offsets must be [begin, end] integers, got {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise ValueError(f"{where}: data_offsets {offsets} are outside the data block "
                             f"[0, {data_size}]")
        expected = math.prod(shape) * DTYPES[dtype].itemsize      # Python ints: no overflow
        if end - begin != expected:
            raise ValueError(f"{where}: data_offsets {offsets} hold {end - begin} bytes, but "
                             f"{dtype} of shape {shape} needs {expected}")
        entries[name] = (dtype, tuple(shape), begin, end)

    # sorted by offset, the tensors must tile [0, data_size) exactly
    position, previous = 0, None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if begin < position:
            raise ValueError(f"tensor {name!r} at bytes [{begin}, {end}) overlaps "
                             f"tensor {previous!r}, which ends at {position}")
        if begin > position:
            raise ValueError(f"gap in the data block: bytes [{position}, {begin}) before "
                             f"tensor {name!r} belong to no tensor")
        position, previous = end, name
    if position != data_size:
        raise ValueError(f"data block has {data_size} bytes but the tensors end at {position}")
    return entries, metadata


def _split(file_size, first8):
    """File size and its first 8 bytes -> header length, after checking it fits."""
    if file_size < 8:
        raise ValueError(f"file has {file_size} bytes, too short for the 8-byte header length")
    n = int.from_bytes(first8, "little")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"header length {n} exceeds the cap of {MAX_HEADER_BYTES} bytes")
    if 8 + n > file_size:
        raise ValueError(f"header length {n} runs past the end of the file ({file_size} bytes)")
    return n


def _tensor(data, dtype, shape, begin, end):
    raw = data[begin:end].view(DTYPES[dtype]).reshape(shape)   # a view: nothing copied yet
    return bf16_to_float32(raw) if dtype == "BF16" else raw


def read_header(path):
    """Validate a file's header without reading its data -> (entries, metadata), where
    entries: name -> (dtype string, shape tuple, begin, end)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = _split(size, f.read(8))
        return parse_header(f.read(n), size - 8 - n)


def load_file(path, copy=True):
    """Read a .safetensors file -> (dict name -> ndarray, metadata dict or None).

    The file is memory-mapped and validated first. copy=True returns ordinary writable
    arrays; copy=False returns read-only views into the map (zero-copy; the file must
    then stay unchanged while they are in use). BF16 is always a new float32 array."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = _split(size, f.read(8))
        entries, metadata = parse_header(f.read(n), size - 8 - n)
    data_size = size - 8 - n
    if data_size == 0:                                   # mmap refuses an empty range
        data = np.zeros(0, dtype=np.uint8)
    else:
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(data_size,))
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        t = _tensor(data, dtype, shape, begin, end)
        tensors[name] = np.array(t) if copy else np.asarray(t)
    return tensors, metadata


def load(buffer):
    """Parse safetensors bytes already in memory -> (dict name -> ndarray, metadata)."""
    data = np.frombuffer(buffer, dtype=np.uint8)
    n = _split(data.size, bytes(data[:8]))
    entries, metadata = parse_header(bytes(data[8:8 + n]), data.size - 8 - n)
    body = data[8 + n:]
    return {name: np.array(_tensor(body, *e)) for name, e in entries.items()}, metadata


# ---- writing ----------------------------------------------------------------------------------
def _dtype_name(name, arr):
    key = (arr.dtype.kind, arr.dtype.itemsize)
    if key not in _NAME_OF:
        raise ValueError(f"tensors[{name!r}] has dtype {arr.dtype}, which safetensors cannot "
                         f"store (supported: {', '.join(DTYPES)})")
    return _NAME_OF[key]


def _prepare(tensors, metadata=None, dtypes=None):
    """-> (header bytes incl. the 8-byte length, list of little-endian C-order arrays)."""
    if not isinstance(tensors, dict):
        raise ValueError(f"tensors must be a dict of name -> array, got {type(tensors).__name__}")
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in metadata.items()):
            raise ValueError(f"metadata must be a dict of str -> str, got {metadata!r}")
    dtypes = dict(dtypes or {})
    for name in dtypes:
        if name not in tensors:
            raise ValueError(f"dtypes names {name!r}, which is not in tensors")
    header = {} if metadata is None else {METADATA_KEY: dict(sorted(metadata.items()))}
    arrays, offset = [], 0
    for name in sorted(tensors):
        if not isinstance(name, str) or name == METADATA_KEY:
            raise ValueError(f"tensor name {name!r} is not allowed")
        arr = np.asarray(tensors[name])
        want = dtypes.get(name)
        if want == "BF16":
            if arr.dtype.kind != "f":
                raise ValueError(f"tensors[{name!r}] has dtype {arr.dtype}; only floats become BF16")
            dtype, raw = "BF16", float32_to_bf16(arr)
        elif want is None or want == _dtype_name(name, arr):
            dtype = _dtype_name(name, arr)
            raw = arr.astype(DTYPES[dtype], copy=False)          # little-endian on any host
        else:
            raise ValueError(f"dtypes[{name!r}] = {want!r}: only 'BF16' conversion is supported")
        raw = np.ascontiguousarray(raw).reshape(-1)
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + raw.nbytes]}
        arrays.append(raw)
        offset += raw.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)                     # pad: the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text, arrays


def dumps(tensors, metadata=None, dtypes=None):
    """dict name -> array -> the bytes of a .safetensors file. Deterministic: names sorted.
    dtypes: optional name -> safetensors dtype, to store a float tensor as "BF16"."""
    head, arrays = _prepare(tensors, metadata, dtypes)
    return head + b"".join(a.tobytes() for a in arrays)


def save_file(tensors, path, metadata=None, dtypes=None):
    """Write dict name -> array as a .safetensors file, tensor by tensor (no second copy of
    the model in memory), atomically: everything is checked first, then written to a temporary
    file beside `path`, flushed to disk, and os.replace()d onto it. A failed or killed save
    leaves the previous file as it was (and at worst a hidden temporary file, removed by the
    next save to the same path)."""
    head, arrays = _prepare(tensors, metadata, dtypes)
    with atomic_write(path) as f:
        f.write(head)
        for a in arrays:
            f.write(memoryview(a).cast("B"))


def umask_mode(mode):
    """mode as open() and os.mkdir() would create it under this process's umask (mkstemp
    and mkdtemp create 0600 files and 0700 directories, whatever the umask)."""
    umask = os.umask(0)                          # reading the umask means setting it
    os.umask(umask)
    return mode & ~umask


class atomic_write:
    """`with atomic_write(path) as f:` writes a hidden temporary file in path's directory
    (binary; text=True for text); on success it is fsynced and os.replace()d onto path
    (atomic on POSIX), on any exception removed. Temporary files that killed writers left
    for the same path (their process is gone) are removed after a successful replace."""

    def __init__(self, path, text=False):
        self.path = os.fspath(path)
        self.text = text
        directory, name = os.path.split(os.path.abspath(self.path))
        self.directory, self.prefix = directory, f".{name}.tmp-"

    def __enter__(self):
        fd, self.tmp = tempfile.mkstemp(prefix=f"{self.prefix}{os.getpid()}-", dir=self.directory)
        os.fchmod(fd, umask_mode(0o666))         # mkstemp's 0600 would hide it from others
        self.f = os.fdopen(fd, "w" if self.text else "wb",
                           **({"encoding": "utf-8"} if self.text else {}))
        return self.f

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.f.flush()
                os.fsync(self.f.fileno())
            self.f.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
                _fsync_dir(self.directory)
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
        if exc_type is None:
            self._remove_stale()
        return False

    def _remove_stale(self):
        for entry in os.listdir(self.directory):
            if not entry.startswith(self.prefix):
                continue
            pid = entry[len(self.prefix):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                try:
                    os.remove(os.path.join(self.directory, entry))
                except OSError:
                    pass


def _alive(pid):
    if pid == os.getpid():
        return False              # our own leftover from an earlier, interrupted save
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
