"""Softmax over the last axis, with an optional scale and causal mask.

One program normalises one row. A row that fits one block is loaded once,
reduced (max, then sum of exponentials) and stored. A longer row is
streamed twice: the first pass keeps a running maximum and a running sum
rescaled to it (the online softmax of flash attention), per lane, combined
across lanes once at the end; the second pass writes exp(x - max) / sum.
The causal mask treats the last two axes [.., S, T] as queries x keys with
query i at position T - S + i, as `attention` does: key j is dropped when
j > T - S + i.
"""
import numpy as np

import kdsl
import kdsl.language as kl

from .configs import tuned
from .elementwise import as_tensor, check_out, new_out

# the running maximum starts finite so that a lane that has only seen -inf
# (masked) entries gives exp(-inf - start) = 0 rather than exp(nan)
RUNNING_MAX_START = -1.0e30


@kdsl.jit
def masked_scaled(x_row, cols, visible, scale):
    """x[cols] * scale, -inf past the visible columns (masked after the
    scaling, so a zero or negative scale cannot turn the padding into nan or +inf)."""
    mask = cols < visible
    return kl.where(mask, kl.load(x_row + cols, mask=mask, other=0.0) * scale,
                    -float("inf"))


@kdsl.jit
def softmax_kernel(x_ptr, out_ptr, N, S, stride_x, stride_o, scale,
                   CAUSAL: kl.constexpr, ONE_PASS: kl.constexpr, BLOCK: kl.constexpr):
    """out[row] = softmax(scale * x[row]). exp, not exp2 of x * log2(e): PoCL's exp2 ran
    2.8x slower than its exp here (/tmp/kdsl-bugs/kernels-3.py)."""
    row = kl.program_id(0)
    x_row = x_ptr + row * stride_x
    out_row = out_ptr + row * stride_o
    offs = kl.arange(0, BLOCK)
    # keys visible to this row: all N, or N - S + (row mod S) + 1 with the causal mask
    visible = N
    if CAUSAL:
        visible = N - S + row % S + 1
    if ONE_PASS:
        x = masked_scaled(x_row, offs, visible, scale)
        num = kl.exp(x - kl.max(x, axis=0))
        kl.store(out_row + offs, num / kl.sum(num, axis=0), mask=offs < N)
    else:
        running_max = kl.full((BLOCK,), RUNNING_MAX_START, kl.float32)
        running_sum = kl.zeros((BLOCK,), dtype=kl.float32)
        for start in range(0, visible, BLOCK):
            cols = start + offs
            x = masked_scaled(x_row, cols, visible, scale)
            new_max = kl.maximum(running_max, x)
            running_sum = running_sum * kl.exp(running_max - new_max) + kl.exp(x - new_max)
            running_max = new_max
        row_max = kl.max(running_max, axis=0)
        inv_sum = 1.0 / kl.sum(running_sum * kl.exp(running_max - row_max), axis=0)
        for start in range(0, N, BLOCK):
            cols = start + offs
            x = masked_scaled(x_row, cols, visible, scale)
            kl.store(out_row + cols, kl.exp(x - row_max) * inv_sum, mask=cols < N)


def softmax_config(N):
    """Tuned, else one block up to 1024 (4096 on a GPU) columns; beyond, streamed in
    blocks of 4096 over 256 work-items on a GPU, of 64 in one work-item on a CPU.

    A CPU's one-work-item stream computes its exps 8 wide (the code generator's
    vector math) where 64 work-items of 1024-column blocks left that to PoCL's
    work-group vectoriser: 4096 x 4096 in 33.9 against 79.5 ms (PoCL, device
    time, 2026-12-07; 32 columns 33.9, 128 36.4, 256 43.5)."""
    cpu = kdsl.current_device().is_cpu
    block = min(1024 if cpu else 4096, 1 << max(N - 1, 0).bit_length())
    default = {"BLOCK": block, "num_threads": min(block, 64 if cpu else 256)}
    if cpu and N > block:
        default = {"BLOCK": 64, "num_threads": 1}
    return tuned("softmax", {"N": N}, default)


def softmax(x, *, scale=None, causal=False, out=None, config=None):
    """softmax(scale * x) over the last axis of x [..., N] (fp32 or fp16 storage) -> fp32.

    causal=True needs at least 2 axes [..., S, N] with N >= S: row i of the
    last-but-one axis sees columns 0 .. N - S + i (query i at position N - S + i).
    `out` may be x itself.

    >>> p = softmax(scores, scale=1 / 8.0, causal=True)
    """
    x = as_tensor(x, "softmax", "x")
    if x.ndim == 0:
        raise ValueError("softmax(): x must have at least one axis")
    N = x.shape[-1]
    S = x.shape[-2] if x.ndim >= 2 else 1
    if causal and (x.ndim < 2 or N < S):
        raise ValueError(f"softmax(): causal=True needs x of shape [..., S, N] with N >= S, got "
                         f"{x.shape}")
    out = new_out(x.shape, x.device) if out is None else check_out(out, x.shape, "softmax")
    rows = int(np.prod(x.shape[:-1]))
    if rows * N == 0:
        return out
    stride_x, stride_o = _row_stride(x, "x"), _row_stride(out, "out")
    cfg = config or softmax_config(N)
    scale = 1.0 if scale is None else float(scale)
    softmax_kernel[(rows,)](x, out, N, S, stride_x, stride_o, scale,
                            CAUSAL=bool(causal), ONE_PASS=N <= cfg["BLOCK"],
                            BLOCK=cfg["BLOCK"], num_threads=cfg["num_threads"])
    return out


def _row_stride(t, name):
    """The stride between consecutive rows when t's leading axes flatten to one, else ValueError."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"softmax(): the last axis of {name} must be contiguous (stride 1), got "
                         f"strides {t.strides}")
    if t.ndim == 1:
        return t.shape[0]
    row_stride = t.stride(-2)
    expected = row_stride
    for d in range(t.ndim - 2, -1, -1):
        if t.shape[d] > 1 and t.stride(d) != expected:
            raise ValueError(f"softmax(): the leading axes of {name} (shape {t.shape}, strides "
                             f"{t.strides}) do not flatten to evenly spaced rows; copy it to "
                             f"a contiguous tensor first")
        expected *= t.shape[d]
    return row_stride
