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
from .fastmath import exp_nonpositive

# the running maximum starts finite so that a lane that has only seen -inf
# (masked) entries gives exp(-inf - start) = 0 rather than exp(nan)
RUNNING_MAX_START = -1.0e30


@kdsl.jit
def masked_scaled(x_row, cols, visible, scale, shift, CAUSAL: kl.constexpr, EVEN: kl.constexpr):
    """x[cols] * scale - shift (one FMA), -inf past the visible columns (masked
    after the scaling, so a zero or negative scale cannot turn the padding into
    nan or +inf). EVEN: every column of the block is in the row, so the load
    needs no mask and only the causal limit masks. The passes that take
    exponentials (stored_exp_pass, online_out_pass) subtract the row maximum
    here: written as a multiply and a subtract PoCL kept two instructions per
    8 elements. Fused, the row's largest element can come out half an ulp
    above 0, which exp_nonpositive takes (e**x for x a little over 0)."""
    if EVEN and CAUSAL:
        x = kl.where(cols < visible, kl.fma(kl.load(x_row + cols), scale, -shift),
                     -float("inf"))
    elif EVEN:
        x = kl.fma(kl.load(x_row + cols), scale, -shift)
    else:
        mask = cols < visible
        x = kl.where(mask, kl.fma(kl.load(x_row + cols, mask=mask, other=0.0), scale, -shift),
                     -float("inf"))
    return x


@kdsl.jit
def store_cols(out_row, cols, value, N, EVEN: kl.constexpr):
    """out_row[cols] = value for the columns in the row (all of them when EVEN)."""
    if EVEN:
        kl.store(out_row + cols, value)
    else:
        kl.store(out_row + cols, value, mask=cols < N)


@kdsl.jit
def running_max_pass(x_row, offs, lo, hi, visible, scale, running_max, CAUSAL: kl.constexpr,
                     FULL: kl.constexpr, BLOCK: kl.constexpr):
    """running_max, maximised over the blocks of columns lo..hi (FULL: whole blocks)."""
    for start in range(lo, hi, BLOCK):
        running_max = kl.maximum(running_max,
                                 masked_scaled(x_row, start + offs, visible, scale, 0.0, CAUSAL,
                                               FULL))
    return running_max


@kdsl.jit
def stored_exp_pass(x_row, out_row, offs, lo, hi, visible, scale, row_max, running_sum, N,
                    CAUSAL: kl.constexpr, FULL: kl.constexpr, BLOCK: kl.constexpr,
                    EXP: kl.constexpr):
    """out = exp(x - row_max) over the blocks of columns lo..hi; returns running_sum plus them."""
    for start in range(lo, hi, BLOCK):
        num = exp_nonpositive(
            masked_scaled(x_row, start + offs, visible, scale, row_max, CAUSAL, FULL), EXP)
        running_sum += num
        store_cols(out_row, start + offs, num, N, FULL)
    return running_sum


@kdsl.jit
def scale_pass(out_row, offs, lo, hi, factor, N, FULL: kl.constexpr, BLOCK: kl.constexpr):
    """out *= factor over the blocks of columns lo..hi. The work-item reads back
    what it stored in stored_exp_pass (the same block layout)."""
    for start in range(lo, hi, BLOCK):
        cols = start + offs
        if FULL:
            num = kl.load(out_row + cols)
        else:
            num = kl.load(out_row + cols, mask=cols < N, other=0.0)
        store_cols(out_row, cols, num * factor, N, FULL)


@kdsl.jit
def online_sum_pass(x_row, offs, lo, hi, visible, scale, running_max, running_sum,
                    CAUSAL: kl.constexpr, FULL: kl.constexpr, BLOCK: kl.constexpr,
                    EXP: kl.constexpr):
    """(running_max, running_sum) of the online softmax over the blocks of columns lo..hi."""
    for start in range(lo, hi, BLOCK):
        x = masked_scaled(x_row, start + offs, visible, scale, 0.0, CAUSAL, FULL)
        new_max = kl.maximum(running_max, x)
        running_sum = (running_sum * exp_nonpositive(running_max - new_max, EXP)
                       + exp_nonpositive(x - new_max, EXP))
        running_max = new_max
    return running_max, running_sum


@kdsl.jit
def online_out_pass(x_row, out_row, offs, lo, hi, visible, scale, row_max, inv_sum, N,
                    CAUSAL: kl.constexpr, FULL: kl.constexpr, BLOCK: kl.constexpr,
                    EXP: kl.constexpr):
    """out = exp(x - row_max) * inv_sum over the blocks of columns lo..hi."""
    for start in range(lo, hi, BLOCK):
        x = masked_scaled(x_row, start + offs, visible, scale, row_max, CAUSAL, FULL)
        store_cols(out_row, start + offs, exp_nonpositive(x, EXP) * inv_sum, N, FULL)


@kdsl.jit
def softmax_kernel(x_ptr, out_ptr, N, S, stride_x, stride_o, scale,
                   CAUSAL: kl.constexpr, FORM: kl.constexpr, BLOCK: kl.constexpr,
                   EVEN: kl.constexpr, EXP: kl.constexpr):
    """out[row] = softmax(scale * x[row]), in one of three forms: "one_pass"
    (the row is one block; EVEN: exactly, so no masks but the causal one),
    "online" (two streamed passes: a running max and a sum rescaled to it,
    then the output) and "stored" (three: the max; exp(x - max) into out and
    its sum; out times 1 / sum), which takes one exp per element where
    "online" takes three, for rows that stay in the cache between passes.
    The streamed forms run the whole blocks unmasked and a last partial
    block masked: on a CPU a masked access is a compare and branch per
    element (PoCL, 4096 x 1024, stored form: 7.3 ms masked, 1.4 unmasked).
    EXP picks the exponential (fastmath.exp_nonpositive: "poly" or the
    device's "lib"); not exp2 of x * log2(e): PoCL's exp2 ran 2.8x slower
    than its exp here (/tmp/kdsl-bugs/kernels-3.py)."""
    row = kl.program_id(0)
    x_row = x_ptr + row * stride_x
    out_row = out_ptr + row * stride_o
    offs = kl.arange(0, BLOCK)
    # keys visible to this row: all N, or N - S + (row mod S) + 1 with the causal mask
    visible = N
    if CAUSAL:
        visible = N - S + row % S + 1
    full = N - N % BLOCK             # columns in whole blocks
    if FORM == "one_pass":
        x = masked_scaled(x_row, offs, visible, scale, 0.0, CAUSAL, EVEN)
        num = exp_nonpositive(x - kl.max(x, axis=0), EXP)
        store_cols(out_row, offs, num / kl.sum(num, axis=0), N, EVEN)
    elif FORM == "stored":
        running_max = kl.full((BLOCK,), RUNNING_MAX_START, kl.float32)
        running_max = running_max_pass(x_row, offs, 0, min(visible, full), visible, scale,
                                       running_max, CAUSAL, True, BLOCK)
        running_max = running_max_pass(x_row, offs, full, visible, visible, scale, running_max,
                                       CAUSAL, False, BLOCK)
        row_max = kl.max(running_max, axis=0)
        running_sum = kl.zeros((BLOCK,), dtype=kl.float32)
        running_sum = stored_exp_pass(x_row, out_row, offs, 0, full, visible, scale, row_max,
                                      running_sum, N, CAUSAL, True, BLOCK, EXP)
        running_sum = stored_exp_pass(x_row, out_row, offs, full, N, visible, scale, row_max,
                                      running_sum, N, CAUSAL, False, BLOCK, EXP)
        inv_sum = 1.0 / kl.sum(running_sum, axis=0)
        scale_pass(out_row, offs, 0, full, inv_sum, N, True, BLOCK)
        scale_pass(out_row, offs, full, N, inv_sum, N, False, BLOCK)
    else:
        running_max = kl.full((BLOCK,), RUNNING_MAX_START, kl.float32)
        running_sum = kl.zeros((BLOCK,), dtype=kl.float32)
        running_max, running_sum = online_sum_pass(x_row, offs, 0, min(visible, full), visible,
                                                   scale, running_max, running_sum, CAUSAL,
                                                   True, BLOCK, EXP)
        running_max, running_sum = online_sum_pass(x_row, offs, full, visible, visible, scale,
                                                   running_max, running_sum, CAUSAL, False,
                                                   BLOCK, EXP)
        row_max = kl.max(running_max, axis=0)
        inv_sum = 1.0 / kl.sum(running_sum * exp_nonpositive(running_max - row_max, EXP),
                               axis=0)
        online_out_pass(x_row, out_row, offs, 0, full, visible, scale, row_max, inv_sum, N,
                        CAUSAL, True, BLOCK, EXP)
        online_out_pass(x_row, out_row, offs, full, N, visible, scale, row_max, inv_sum, N,
                        CAUSAL, False, BLOCK, EXP)


def softmax_config(N):
    """Tuned, else on a GPU one block up to 4096 columns over 256 work-items,
    streamed ("online") in blocks of 4096 beyond; on a CPU one work-item per
    row, rows of 64+ streamed in blocks of 64 in the "stored" form (see
    softmax_kernel), shorter rows one unmasked block where N is a power of two.

    PoCL, rows x N, device time, medians of 3 alternations (2026-12-07):
    16384 x 512 2.88 ms against 14.7 for one block over 64 work-items;
    4096 x 4096 6.7 against 13.1 for the online stream; 8192 x 1000 3.7
    against 16.4; 32768 x 128 2.1 against 8.3; 65536 x 32 (one block of 32)
    1.2 against 7.5. Blocks of 32 or 128 were no faster than 64. The CPU's
    exp is fastmath's polynomial: 16384 x 512 2.60-2.65 against 2.92-2.94
    ms with PoCL's exp, alternated 3x (.scratch/sm_quick.py, 2026-12-07);
    a GPU's exp is its hardware exp2 and a few instructions, so GPUs keep it."""
    if kdsl.current_device().is_cpu:
        block = min(64, 1 << max(N - 1, 0).bit_length())
        default = {"BLOCK": block, "num_threads": 1, "form": "stored", "exp": "poly"}
    else:
        block = min(4096, 1 << max(N - 1, 0).bit_length())
        default = {"BLOCK": block, "num_threads": min(block, 256)}
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
                            CAUSAL=bool(causal), FORM=_form(N, cfg),
                            BLOCK=cfg["BLOCK"], EVEN=N == cfg["BLOCK"],
                            EXP=cfg.get("exp", "lib"), num_threads=cfg["num_threads"])
    return out


def _form(N, cfg):
    """The kernel's form for rows of N: one block where the row fits, else the
    config's streamed form ("online" unless it names "stored")."""
    if N <= cfg["BLOCK"]:
        return "one_pass"
    return cfg.get("form", "online")


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
