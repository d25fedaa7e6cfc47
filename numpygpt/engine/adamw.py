"""The AdamW update in the engine. Textbook twin: numpygpt/train/optim.py (AdamW.step):
the same formulas, the same numbers.

Devices: the update is done in place, chunk by chunk (CHUNK elements of every array at a
time, in two chunk-sized scratch buffers): no temporary the size of a parameter, each chunk's
passes in the cache, the chunks shared among the cores (engine/parallel.py).
"""
import numpy as np

from . import parallel

CHUNK = 1 << 17     # elements per chunk: its six chunk-sized arrays (3 MiB) stay in cache


def adamw_update(p, g, m, v, t, u, weight_decay, lr, b1, b2, bias1, bias2, eps):
    """One AdamW step on one chunk, in place (p, m, v); t and u scratch of the chunk's shape.
    Each line one pass over the chunk, no other temporary."""
    if weight_decay:
        p *= 1.0 - lr * weight_decay                           # decoupled: p <- p - lr*wd*p
    m *= b1
    m += np.multiply(g, 1.0 - b1, out=t)                       # m <- b1 m + (1-b1) g
    v *= b2
    np.multiply(g, g, out=t)
    v += np.multiply(t, 1.0 - b2, out=t)                       # v <- b2 v + (1-b2) g^2
    np.divide(v, bias2, out=t)
    np.sqrt(t, out=t)
    t += eps                                                   # sqrt(v_hat) + eps
    np.multiply(m, lr / bias1, out=u)
    p -= np.divide(u, t, out=u)                                # p <- p - lr m_hat / denom


def adamw_step_fast(params, grads, m, v, step, lr, betas, eps, weight_decay, decays):
    """Every parameter updated in place by one AdamW step (step >= 1, already counted);
    m, v: the moments by name, updated in place; decays: name -> bool."""
    b1, b2 = betas
    # scalars stay Python floats: float32 arrays are not upcast (NEP 50)
    hyper = (lr, b1, b2, 1.0 - b1 ** step, 1.0 - b2 ** step, eps)
    arrays = {name: _flat(params[name], grads[name], m[name], v[name]) for name in params}
    pieces = [(name, i0, i1) for name in params for i0, i1 in _chunks(*arrays[name][:2])]

    def update(lo, hi):                         # the chunks lo:hi, one after the other
        scratch = {}                            # two chunk-sized buffers, reused by every chunk
        for name, i0, i1 in pieces[lo:hi]:
            (p, g, mm, vv), flat, dt = arrays[name]
            if flat:
                p, g, mm, vv = p[i0:i1], g[i0:i1], mm[i0:i1], vv[i0:i1]
                if dt not in scratch:
                    scratch[dt] = np.empty((2, CHUNK), dt)
                t, u = scratch[dt][:, :i1 - i0]
            else:                               # a strided parameter: whole, own scratch
                t, u = np.empty(p.shape, dt), np.empty(p.shape, dt)
            adamw_update(p, g, mm, vv, t, u, weight_decay if decays[name] else 0.0, *hyper)

    parallel.rows(len(pieces), update, size=sum(p.size for p in params.values()),
                  blas=False)
    # = update(0, len(pieces)): every chunk of every parameter, the chunks shared among the cores


def _chunks(arrays, flat):
    """[i0, i1) element ranges of about CHUNK elements; one whole piece if not flat."""
    if not flat:
        return [(0, None)]
    n = arrays[0].size
    return [(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


def _flat(p, g, m, v):
    """((p, g, m, v), flat, dtype of the update): flat views when all four are contiguous, so
    that a chunk is a slice; else the arrays as they are, updated whole (a reshape would copy,
    and the update must land in the parameter)."""
    flat = all(a.flags.c_contiguous for a in (p, g, m, v))
    arrays = tuple(a.reshape(-1) for a in (p, g, m, v)) if flat else (p, g, m, v)
    return arrays, flat, np.result_type(p.dtype, g.dtype)
