"""Input validation: bad input raises ValueError naming the argument, the value and where it is.

A reference implementation must never give a silent wrong answer (NumPy's fancy
indexing wraps negative ids around) or an IndexError from deep inside a layer.
"""
import json
import os

import numpy as np

from .config import SIZE_FIELDS, param_count


def _where(index) -> str:
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def as_int_array(name, value, ndim=None):
    """np.asarray(value) checked to hold integers (bool and float are refused)."""
    arr = np.asarray(value)
    if arr.size == 0 and arr.dtype == np.float64:     # np.asarray([]) is float64: an empty list is fine
        arr = arr.astype(np.int64)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        if arr.size and np.issubdtype(arr.dtype, np.floating):
            bad = np.argwhere(arr != np.round(arr)) if np.all(np.isfinite(arr)) else np.argwhere(~np.isfinite(arr))
            where = f" (e.g. {name}{_where(bad[0])} = {arr[tuple(bad[0])].item()!r})" if len(bad) else ""
            raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}{where}")
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


def check_range(name, arr, low, high, allowed=None, what=None):
    """Every entry in [low, high) (or equal to `allowed`); else name the first bad one."""
    ok = (arr >= low) & (arr < high)
    if allowed is not None:
        ok |= arr == allowed
    if not ok.all():
        index = tuple(np.argwhere(~ok)[0])
        extra = f" or {allowed}" if allowed is not None else ""
        what = what or f"[{low}, {high})"
        raise ValueError(f"{name}{_where(index)} = {int(arr[index])} is outside {what}{extra}")


def check_same_shape(name, arr, ref_name, ref_shape):
    if arr.shape != tuple(ref_shape):
        raise ValueError(
            f"{name} has shape {arr.shape}, which does not match {ref_name} shape {tuple(ref_shape)}")


def check_attention_mask(attention_mask, shape):
    """(B,T) of 0/1 (or bool), 1 = real token, 0 = padding. Returns a bool array or None."""
    if attention_mask is None:
        return None
    mask = np.asarray(attention_mask)
    check_same_shape("attention_mask", mask, "input_ids", shape)
    if mask.dtype != bool:
        if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
            raise ValueError(f"attention_mask must hold 0/1, got dtype {mask.dtype}")
        bad = (mask != 0) & (mask != 1)
        if bad.any():
            index = tuple(np.argwhere(bad)[0])
            raise ValueError(
                f"attention_mask{_where(index)} = {mask[index].item()!r}; it must be 0 (padding) or 1 (token)")
        mask = mask.astype(bool)
    return mask


def check_reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r} is not one of 'mean', 'sum', 'none'")


def read_json_object(path, what=""):
    """A JSON file holding an object, read without trusting it: bad UTF-8, bad JSON, absurd
    nesting or another type raise ValueError naming the file (`what` says which file it is)."""
    name = f"{what} {path}" if what else str(path)
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{name} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must hold a JSON object, got {type(value).__name__}")
    return value


def check_model_inputs(config, input_ids, attention_mask=None, position_ids=None):
    """Validate and normalise a model's inputs: ids (B,T) int in [0,V); mask (B,T) 0/1 -> bool;
    position ids (B,T) (or (T,)) in [0, n_positions) where the token is real.
    Returns (ids, key_mask or None, position_ids or None)."""
    ids = as_int_array("input_ids", input_ids, ndim=2)
    B, T = ids.shape
    if T == 0:
        raise ValueError("input_ids has length T=0")
    check_range("input_ids", ids, 0, config.vocab_size, what=f"[0, vocab_size={config.vocab_size})")
    key_mask = check_attention_mask(attention_mask, ids.shape)
    learned = config.pos_encoding == "learned"
    if position_ids is None:
        if learned and T > config.n_positions:
            raise ValueError(f"input_ids has length T={T} > n_positions={config.n_positions} "
                             f"(learned absolute positions; use pos_encoding='rope' for any length)")
        return ids, key_mask, None
    pos = as_int_array("position_ids", position_ids, ndim=(1, 2))
    if pos.ndim == 1:
        pos = pos[None]
    if pos.shape[1:] != (T,) or pos.shape[0] not in (1, B):
        raise ValueError(f"position_ids has shape {np.shape(position_ids)}, which does not "
                         f"match input_ids shape {ids.shape}")
    pos = np.broadcast_to(pos, (B, T))
    if key_mask is not None:                 # padding positions are never looked at
        pos = np.where(key_mask, pos, 0)
    high = config.n_positions if learned else np.iinfo(np.int64).max
    check_range("position_ids", pos, 0, high,
                what=f"[0, n_positions={config.n_positions})" if learned else "[0, inf)")
    return ids, key_mask, pos


def check_params(shapes, params, dtype):
    """A params dict must have exactly the expected names (shapes: name -> shape) and shapes.
    Returns the arrays contiguous and in dtype (converted only where they are not)."""
    missing = [k for k in shapes if k not in params]
    unexpected = [k for k in params if k not in shapes]
    if missing or unexpected:
        raise ValueError(f"params do not match the config: missing {missing}, unexpected {unexpected}")
    out = {}
    for name, shape in shapes.items():
        p = np.asarray(params[name])
        if p.shape != shape:
            raise ValueError(f"params[{name!r}] has shape {p.shape}, expected {shape}")
        if p.dtype.kind not in "fiu" or p.dtype == bool:
            raise ValueError(f"params[{name!r}] has dtype {p.dtype}, expected floating point")
        with np.errstate(over="ignore", invalid="ignore"):       # reported below, by name
            out[name] = np.ascontiguousarray(p, dtype=dtype)
        bad = ~np.isfinite(out[name])
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            value = p[index].item()
            why = (f"holds {value!r}, which overflows {np.dtype(dtype).name}"
                   if np.isfinite(value) else f"holds {value!r}")
            raise ValueError(f"params[{name!r}]{list(index)} {why}")
    return out


class NonFiniteError(ValueError):
    """A computation went outside the floating-point range (overflow, NaN or inf): the
    message says where. A ValueError, so callers that catch bad input catch it too."""


def overflow_site(traceback_):
    """The layer a FloatingPointError was raised in: the innermost function of numpygpt's
    layers or engine named like a layer (*_forward, *_backward, *_fast, the losses), read
    from the functions' own names in the traceback."""
    layer, inner = None, None
    while traceback_ is not None:
        code = traceback_.tb_frame.f_code
        module = traceback_.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("numpygpt.layers", "numpygpt.engine", "numpygpt.model")):
            if code.co_name.endswith(("_forward", "_backward", "_fast", "cross_entropy")):
                layer = code.co_name         # the innermost layer function: its public name
            elif module.startswith(("numpygpt.layers", "numpygpt.engine")):
                inner = code.co_name         # a helper inside one (used if no layer is named)
        traceback_ = traceback_.tb_next
    return layer or inner or "the model"


# ---- sizes read from a file -----------------------------------------------------------------

def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def available_memory():
    """Bytes of memory this process could still get (Linux: MemAvailable; elsewhere the
    free physical pages), or None when the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_stored_model(where, config, stored_bytes, stored_itemsize, itemsize):
    """A model size read from a file, judged before anything is allocated or listed: its
    parameters must fit in the bytes stored for them (at least stored_itemsize bytes each),
    and, as itemsize-byte numbers, in the memory available."""
    n = param_count(config)
    sizes = ", ".join(f"{name}={getattr(config, name)}" for name in SIZE_FIELDS)
    if config.n_kv_head is not None:                   # c_attn's width depends on it
        sizes += f", n_kv_head={config.n_kv_head}"
    if n * stored_itemsize > stored_bytes:
        raise ValueError(f"{where}: {sizes} describe {n:,} parameters, more than the "
                         f"{human_bytes(stored_bytes)} of weights stored can hold; the sizes "
                         f"do not describe these weights")
    have = available_memory()
    if have is not None and n * itemsize > have:
        raise ValueError(f"{where}: {sizes} describe {n:,} parameters, "
                         f"{human_bytes(n * itemsize)} in memory, more than the "
                         f"{human_bytes(have)} available")
