"""Row normalisations: RMSNorm (Llama; Gemma's 1 + w), the fused residual add + RMSNorm, LayerNorm.

One program normalises one row, looping over it in BLOCK-wide pieces so any
row length works: a first pass reduces (sum of squares, or mean then
variance), a last pass scales and stores. The row is re-read from memory in
the last pass, which on a row of a few thousand floats hits the cache.
"""
import numpy as np

import kdsl
import kdsl.language as kl

from .configs import tuned
from .elementwise import as_tensor, check_out, load_block, new_out, store_block


@kdsl.jit
def rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, N, stride_x, stride_r, stride_o, eps,
                    ADD_ONE: kl.constexpr, HAS_RESIDUAL: kl.constexpr, BLOCK: kl.constexpr,
                    EVEN: kl.constexpr):
    """out = x / sqrt(mean(x^2) + eps) * w (or * (1 + w)); with HAS_RESIDUAL,
    residual += x first and the updated residual is what is normalised. EVEN:
    N a multiple of BLOCK, no masks (elementwise.load_block)."""
    row = kl.program_id(0)
    offs = kl.arange(0, BLOCK)
    x_row = x_ptr + row * stride_x
    res_row = res_ptr + row * stride_r
    squares = kl.zeros((BLOCK,), dtype=kl.float32)
    for start in range(0, N, BLOCK):
        cols = start + offs
        x = load_block(x_row + cols, cols, N, EVEN)
        if HAS_RESIDUAL:
            x += load_block(res_row + cols, cols, N, EVEN)
            store_block(res_row + cols, x, cols, N, EVEN)
        squares += x * x
    rstd = kl.rsqrt(kl.sum(squares, axis=0) / N + eps)
    # the work-item that stored residual[cols] above reads it back here (same layout)
    src_row = res_row if HAS_RESIDUAL else x_row
    out_row = out_ptr + row * stride_o
    for start in range(0, N, BLOCK):
        cols = start + offs
        x = load_block(src_row + cols, cols, N, EVEN)
        w = load_block(w_ptr + cols, cols, N, EVEN)
        if ADD_ONE:
            w = w + 1.0
        store_block(out_row + cols, x * rstd * w, cols, N, EVEN)


@kdsl.jit
def layer_norm_kernel(x_ptr, w_ptr, b_ptr, out_ptr, N, stride_x, stride_o, eps,
                      HAS_BIAS: kl.constexpr, BLOCK: kl.constexpr, EVEN: kl.constexpr):
    """out = (x - mean) / sqrt(var + eps) * w + b, the variance taken around the
    mean in a second pass (no cancellation of E[x^2] - E[x]^2); EVEN as in
    rms_norm_kernel."""
    row = kl.program_id(0)
    offs = kl.arange(0, BLOCK)
    x_row = x_ptr + row * stride_x
    total = kl.zeros((BLOCK,), dtype=kl.float32)
    for start in range(0, N, BLOCK):
        cols = start + offs
        total += load_block(x_row + cols, cols, N, EVEN)
    mean = kl.sum(total, axis=0) / N
    squares = kl.zeros((BLOCK,), dtype=kl.float32)
    for start in range(0, N, BLOCK):
        cols = start + offs
        centred = load_block(x_row + cols, cols, N, EVEN) - mean
        if not EVEN:
            centred = kl.where(cols < N, centred, 0.0)
        squares += centred * centred
    rstd = kl.rsqrt(kl.sum(squares, axis=0) / N + eps)
    out_row = out_ptr + row * stride_o
    for start in range(0, N, BLOCK):
        cols = start + offs
        x = load_block(x_row + cols, cols, N, EVEN)
        y = (x - mean) * rstd * load_block(w_ptr + cols, cols, N, EVEN)
        if HAS_BIAS:
            y += load_block(b_ptr + cols, cols, N, EVEN)
        store_block(out_row + cols, y, cols, N, EVEN)


def norm_config(kernel_name, N):
    """BLOCK and num_threads for a row of N, tuned or by default: on a CPU one
    work-item over 64-wide pieces (no barriers, each a full pass over the
    work-group on PoCL; with the pieces unmasked where 64 divides N, RMSNorm
    over 512 x 4096 took 0.17 ms against 1.30 for 8 work-items and 128 x 576
    0.010 against 0.040, PoCL, 2026-12-07; 8 work-items had beaten 64 by
    1.2-2.5x before); on a GPU up to 256 work-items, one element each per pass."""
    cpu = kdsl.current_device().is_cpu
    block = min(64 if cpu else 256, 1 << max(N - 1, 0).bit_length())
    default = {"BLOCK": block, "num_threads": 1 if cpu else block}
    return tuned(kernel_name, {"N": N}, default)


def _rows(t, fn, name, N=None):
    """A 2-D [M, N] tensor with a contiguous last dimension, else a ValueError."""
    if t.ndim != 2:
        raise ValueError(f"{fn}(): {name} must be 2-D [M, N], got shape {t.shape}")
    if t.shape[1] > 1 and t.stride(1) != 1:
        raise ValueError(f"{fn}(): {name} must have a contiguous last dimension (stride 1), got "
                         f"strides {t.strides}")
    if N is not None and t.shape[1] != N:
        raise ValueError(f"{fn}(): {name} has {t.shape[1]} columns, expected {N}")
    return t


def _vector(t, N, fn, name):
    t = as_tensor(t, fn, name)
    if t.shape != (N,) or (N > 1 and t.stride(0) != 1):
        raise ValueError(f"{fn}(): {name} must be a contiguous vector of shape ({N},), got "
                         f"{t.shape}")
    return t


def rms_norm(x, w, eps, *, add_one=False, out=None, config=None):
    """RMSNorm of each row of x [M, N]: x / sqrt(mean(x^2) + eps) * w, or * (1 + w)
    with add_one=True (Gemma). w [N] fp32 or fp16. Returns [M, N] fp32.

    >>> h = rms_norm(x, layer.input_layernorm, 1e-6)
    """
    x = _rows(as_tensor(x, "rms_norm", "x"), "rms_norm", "x")
    return _rms_norm(x, None, w, eps, add_one, out, config, "rms_norm")


def add_rms_norm(x, residual, w, eps, *, add_one=False, out=None, config=None):
    """residual += x (in place), then return rms_norm(residual): the add and
    norm between a decoder layer's blocks, in one pass over memory.

    >>> normed = add_rms_norm(attn_out, hidden, layer.post_attention_layernorm, 1e-6)
    """
    x = _rows(as_tensor(x, "add_rms_norm", "x"), "add_rms_norm", "x")
    if not isinstance(residual, kdsl.Tensor):
        raise TypeError(f"add_rms_norm(): residual must be a kdsl.Tensor (it is updated in "
                        f"place), got {type(residual).__name__}")
    _rows(residual, "add_rms_norm", "residual", x.shape[1])
    if residual.shape != x.shape or residual.dtype != np.float32:
        raise ValueError(f"add_rms_norm(): residual must be float32 {x.shape}, got "
                         f"{residual.dtype} {residual.shape}")
    return _rms_norm(x, residual, w, eps, add_one, out, config, "add_rms_norm")


def _rms_norm(x, residual, w, eps, add_one, out, config, fn):
    M, N = x.shape
    w = _vector(w, N, fn, "w")
    out = new_out((M, N), x.device) if out is None else check_out(out, (M, N), fn)
    _rows(out, fn, "out")
    if M * N == 0:
        return out
    cfg = config or norm_config("rms_norm", N)
    res = residual if residual is not None else x
    rms_norm_kernel[(M,)](x, res, w, out, N, x.stride(0), res.stride(0), out.stride(0),
                          float(eps), ADD_ONE=bool(add_one), HAS_RESIDUAL=residual is not None,
                          BLOCK=cfg["BLOCK"], EVEN=N % cfg["BLOCK"] == 0,
                          num_threads=cfg["num_threads"])
    return out


def layer_norm(x, w, b, eps, *, out=None, config=None):
    """LayerNorm of each row of x [M, N] with weight w [N] and bias b [N] (or None).

    >>> y = layer_norm(x, ln.weight, ln.bias, 1e-5)
    """
    x = _rows(as_tensor(x, "layer_norm", "x"), "layer_norm", "x")
    M, N = x.shape
    w = _vector(w, N, "layer_norm", "w")
    b = _vector(b, N, "layer_norm", "b") if b is not None else None
    out = new_out((M, N), x.device) if out is None else check_out(out, (M, N), "layer_norm")
    _rows(out, "layer_norm", "out")
    if M * N == 0:
        return out
    cfg = config or norm_config("layer_norm", N)
    layer_norm_kernel[(M,)](x, w, b if b is not None else w, out, N, x.stride(0), out.stride(0),
                            float(eps), HAS_BIAS=b is not None, BLOCK=cfg["BLOCK"],
                            EVEN=N % cfg["BLOCK"] == 0, num_threads=cfg["num_threads"])
    return out
