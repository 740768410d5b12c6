"""Argmax over the last axis: the index of each row's largest value, on the device.

Greedy decoding picks the next token with it without reading the logits
back: the engine writes the index straight into the next step's input ids
(engine/generate.py), so the host can queue that step before it knows the
token. Ties go to the smallest index, as numpy.argmax; a row of -inf gives
0. Rows holding NaN give an unspecified index (numpy returns the first NaN).
"""
import numpy as np

import kdsl
import kdsl.language as kl

from .configs import tuned
from .elementwise import as_tensor


@kdsl.jit
def best_pass(x_row, offs, lo, hi, best, best_i, FULL: kl.constexpr, BLOCK: kl.constexpr):
    """Per lane, the largest value over the blocks of columns lo..hi and its
    first column (FULL: whole blocks, no masks)."""
    for start in range(lo, hi, BLOCK):
        cols = start + offs
        if FULL:
            x = kl.load(x_row + cols)
        else:
            x = kl.load(x_row + cols, mask=cols < hi, other=-float("inf"))
        better = x > best                   # strictly: a lane keeps its first maximum
        best = kl.where(better, x, best)
        best_i = kl.where(better, cols, best_i)
    return best, best_i


@kdsl.jit
def argmax_kernel(x_ptr, out_ptr, N, stride_x, BLOCK: kl.constexpr):
    """out[row] = the first column of row's maximum; whole blocks unmasked, the last
    partial one masked."""
    row = kl.program_id(0)
    x_row = x_ptr + row * stride_x
    offs = kl.arange(0, BLOCK)
    best = kl.full((BLOCK,), -float("inf"), kl.float32)
    best_i = kl.zeros((BLOCK,), dtype=kl.int32)
    full = N - N % BLOCK
    best, best_i = best_pass(x_row, offs, 0, full, best, best_i, True, BLOCK)
    best, best_i = best_pass(x_row, offs, full, N, best, best_i, False, BLOCK)
    top = kl.max(best, axis=0)
    kl.store(out_ptr + row, kl.min(kl.where(best == top, best_i, N), axis=0))


def argmax_config(N):
    """Tuned, else one work-item streaming blocks of 64 on a CPU (the code
    generator's 8-wide vectors, no barriers), 256 work-items over blocks of
    1024 on a GPU."""
    if kdsl.current_device().is_cpu:
        default = {"BLOCK": 64, "num_threads": 1}
    else:
        default = {"BLOCK": 1024, "num_threads": 256}
    return tuned("argmax", {"N": N}, default)


def argmax(x, *, out=None, config=None):
    """The index of the largest value along the last axis of x [..., N] (fp32 or fp16)
    -> int32 [...] (a [1] tensor for 1-D x), written into `out` when given (any
    int32 view of that many elements, e.g. a slot of a model's input ids).

    >>> argmax(kdsl.tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]], np.float32))).numpy()
    array([1, 0], dtype=int32)
    """
    x = as_tensor(x, "argmax", "x")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"argmax(): x needs a non-empty last axis, got shape {x.shape}")
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        raise ValueError(f"argmax(): the last axis of x must be contiguous (stride 1), got "
                         f"strides {x.strides}")
    N = x.shape[-1]
    rows = int(np.prod(x.shape[:-1]))
    lead = x.shape[:-1] or (1,)
    if out is None:
        out = kdsl.empty(lead, np.int32, device=x.device)
    if out.dtype != np.int32 or out.size != rows or not out.is_contiguous():
        raise ValueError(f"argmax(): out must be a contiguous int32 tensor of {rows} elements, "
                         f"got {out.dtype} of shape {out.shape}")
    if rows == 0:
        return out
    row_stride = x.stride(-2) if x.ndim >= 2 else N
    if x.ndim > 2 and not x.is_contiguous():
        raise ValueError(f"argmax(): x of shape {x.shape} with strides {x.strides} does not "
                         f"flatten to evenly spaced rows; copy it to a contiguous tensor first")
    cfg = config or argmax_config(N)
    argmax_kernel[(rows,)](x, out, N, row_stride, BLOCK=cfg["BLOCK"],
                           num_threads=cfg["num_threads"])
    return out
