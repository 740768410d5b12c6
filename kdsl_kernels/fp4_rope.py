"""Decode's QKV projection, RoPE and KV-cache write in one launch.

`linear_rope_qkv(x, w_qkv, ...)` computes one token's fused Q/K/V projection
with the FP4 GEMV (optionally RMS-normalising x on the way in and adding a
bias), rotates Q and K by RoPE (rotate-half layout) at `position`, and
stores Q into `q_out` and K and V into their KV-cache slots: what
fp4.linear(...) followed by rope_qkv(...) does, with one launch fewer per
layer. A decode step is launch-bound on a GPU and pays a few microseconds
per launch on PoCL (scheduling between kernels, and the host's enqueue on
the same cores).

A program computes BN rows of the weight. For Q and K it takes BN rotary
pairs of one head, so rows r and r + D/2 of the head (the two halves the
rotate-half layout pairs) come from the same program: it computes both
row blocks, as the gated GEMV computes its gate and up halves, and rotates
them elementwise with the cos/sin tables of kdsl_kernels.rope.
"""
import kdsl
import kdsl.language as kl

from .fp4_kernels import (CPU_BYTES_GEMV, _byte_chunk, fp4_gemv_bytes_rows, fp4_gemv_config,
                          fp4_gemv_rows, word_gemv_default)
from .row_tiles import ROW_TILE
from .rope import cos_sin_tables


@kdsl.jit
def fp4_rows_any(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, bias_ptr, oidx_ptr, ow_ptr,
                 row0, N, K, n_groups, n_out, eps, READING: kl.constexpr, G: kl.constexpr,
                 HAS_BIAS: kl.constexpr, EVEN: kl.constexpr, NORM: kl.constexpr,
                 BYTES: kl.constexpr, DEQ: kl.constexpr, BN: kl.constexpr, BK: kl.constexpr,
                 BW: kl.constexpr, R: kl.constexpr):
    """(W x' + bias) for rows row0 .. row0 + BN - 1: the CPU byte-lane GEMV's
    rows (BYTES: codes/step/base are the row-tiled layout) or the GPU word
    GEMV's (words/scales/offsets). row0 is a multiple of BN (ALIGNED)."""
    if BYTES:
        y = fp4_gemv_bytes_rows(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, bias_ptr,
                                oidx_ptr, ow_ptr, row0, N, K, n_groups, n_out, eps, READING, G,
                                HAS_BIAS, EVEN, NORM, BN, BK, R, True)
    else:
        y = fp4_gemv_rows(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, bias_ptr, oidx_ptr,
                          ow_ptr, row0 + kl.arange(0, BN), N, K, n_groups, n_out, eps, READING,
                          DEQ, G, HAS_BIAS, EVEN, NORM, BN, BW)
    return y


@kdsl.jit
def fp4_gemv_rope_kernel(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, bias_ptr, oidx_ptr,
                         ow_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, N, K, n_groups, n_out,
                         eps, pos, H, KVH, stride_qh, stride_kh, stride_vh,
                         READING: kl.constexpr, G: kl.constexpr, HAS_BIAS: kl.constexpr,
                         EVEN: kl.constexpr, NORM: kl.constexpr, BYTES: kl.constexpr,
                         DEQ: kl.constexpr, BN: kl.constexpr, BK: kl.constexpr,
                         BW: kl.constexpr, R: kl.constexpr, HALF_D: kl.constexpr):
    """Programs 0 .. (H + KVH) * HALF_D / BN - 1: BN rotary pairs of a Q head
    (then of a K head), rotated at `pos` and stored into q (into the K slot);
    the rest: BN rows of V each, stored into the V slot. The weight's rows
    are Q's H heads, K's KVH, V's KVH, each of D = 2 HALF_D."""
    pid = kl.program_id(0)
    blocks = HALF_D // BN                   # programs per rotated head
    if pid < (H + KVH) * blocks:
        head = pid // blocks
        pair = (pid % blocks) * BN + kl.arange(0, BN)
        row0 = head * 2 * HALF_D + (pid % blocks) * BN
        y1 = fp4_rows_any(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, bias_ptr, oidx_ptr,
                          ow_ptr, row0, N, K, n_groups, n_out, eps, READING, G, HAS_BIAS, EVEN,
                          NORM, BYTES, DEQ, BN, BK, BW, R)
        y2 = fp4_rows_any(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, bias_ptr, oidx_ptr,
                          ow_ptr, row0 + HALF_D, N, K, n_groups, n_out, eps, READING, G,
                          HAS_BIAS, EVEN, NORM, BYTES, DEQ, BN, BK, BW, R)
        c = kl.load(cos_ptr + pos * HALF_D + pair)
        s = kl.load(sin_ptr + pos * HALF_D + pair)
        first = y1 * c - y2 * s
        second = y2 * c + y1 * s
        if head < H:
            kl.store(q_ptr + head * stride_qh + pair, first)
            kl.store(q_ptr + head * stride_qh + HALF_D + pair, second)
        else:
            kl.store(k_ptr + (head - H) * stride_kh + pair, first)
            kl.store(k_ptr + (head - H) * stride_kh + HALF_D + pair, second)
    else:
        v_row = (pid - (H + KVH) * blocks) * BN        # row within V's KVH x D
        y = fp4_rows_any(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, bias_ptr, oidx_ptr,
                         ow_ptr, (H + KVH) * 2 * HALF_D + v_row, N, K, n_groups, n_out, eps,
                         READING, G, HAS_BIAS, EVEN, NORM, BYTES, DEQ, BN, BK, BW, R)
        kl.store(v_ptr + (v_row // (2 * HALF_D)) * stride_vh + v_row % (2 * HALF_D)
                 + kl.arange(0, BN), y)


def _rope_gemv_config(cfg, K):
    """The GEMV config this kernel runs: an int16-lane CPU config (which it has
    no form for) becomes the byte-lane default, an integer-dot GPU config
    (likewise) the float word kernel's default."""
    if cfg.get("lanes") == "int16":
        return dict(CPU_BYTES_GEMV)
    if cfg.get("lanes") == "idot":
        return word_gemv_default(K)
    return cfg


def rope_fusable(packed, head_dim, device, config=None):
    """Whether linear_rope_qkv() runs for this weight and head size on `device`:
    the GEMV's rows per program divide head_dim / 2, the rows fill whole
    programs and K whole groups (no masks)."""
    N, K = packed.shape
    cfg = _rope_gemv_config(config or fp4_gemv_config(packed, device), K)
    return (head_dim % 2 == 0 and (head_dim // 2) % cfg["BN"] == 0
            and K % packed.group_size == 0 and N % head_dim == 0
            and (cfg.get("lanes") != "bytes" or ROW_TILE % cfg["BN"] == 0
                 or cfg["BN"] % ROW_TILE == 0))


def linear_rope_qkv(x, packed, *, n_heads, n_kv_heads, head_dim, position, base, q_out, k_out,
                    v_out, bias=None, rms_norm=None, config=None):
    """One token's q, k, v = split(x' @ W.T + bias), then q_out = rope(q), k_out =
    rope(k), v_out = v at `position` (rotate-half RoPE over the whole head,
    default inv_freq of `base`), in one launch. x' = x, or rms_norm(x, *rms_norm).

    x [1, K] float32; packed the FP4 [(n_heads + 2 n_kv_heads) head_dim, K]
    weight; q_out [n_heads, 1, head_dim] and k_out, v_out [n_kv_heads, 1,
    head_dim] (typically KV-cache slots), each with its last two strides
    contiguous. Only where rope_fusable(); ValueError otherwise.

    >>> linear_rope_qkv(x, w_qkv, n_heads=9, n_kv_heads=3, head_dim=64, position=p,
    ...                 base=1e5, q_out=q, k_out=cache.slot(0, "k", past=p, new=1),
    ...                 v_out=cache.slot(0, "v", past=p, new=1), rms_norm=(w, 1e-5))
    """
    N, K = packed.shape
    if N != (n_heads + 2 * n_kv_heads) * head_dim:
        raise ValueError(f"linear_rope_qkv(): the weight has {N} rows, not (n_heads + 2 "
                         f"n_kv_heads) x head_dim = {(n_heads + 2 * n_kv_heads) * head_dim}")
    if x.shape != (1, K):
        raise ValueError(f"linear_rope_qkv(): x must be [1, {K}] (one token), got {x.shape}")
    for t, heads, name in ((q_out, n_heads, "q_out"), (k_out, n_kv_heads, "k_out"),
                           (v_out, n_kv_heads, "v_out")):
        if t.shape != (heads, 1, head_dim) or t.stride(2) != 1:
            raise ValueError(f"linear_rope_qkv(): {name} must be [{heads}, 1, {head_dim}] with "
                             f"its last stride 1, got shape {t.shape} strides {t.strides}")
    if position < 0:
        raise ValueError(f"linear_rope_qkv(): position must be >= 0, got {position}")
    cfg = _rope_gemv_config(config or fp4_gemv_config(packed, x.device), K)
    if not rope_fusable(packed, head_dim, x.device, cfg):
        raise ValueError(f"linear_rope_qkv(): {cfg['BN']} rows per program do not divide "
                         f"head_dim / 2 = {head_dim // 2} (or K {K} is not whole groups of "
                         f"{packed.group_size}); use fp4.linear and rope_qkv")
    cos, sin = cos_sin_tables(base, head_dim, position + 1, x.device)
    arrays = packed.device_arrays(x.device)
    norm_w, eps = rms_norm if rms_norm is not None else (x, 0.0)
    bytes_lanes = cfg.get("lanes") == "bytes"
    words = max(cfg.get("BW", 0), packed.group_size // 8)
    # K is whole groups (rope_fusable) and rows fill the programs; the word GEMV
    # also needs its steps of `words` words to fill each row
    even = bytes_lanes or (K // 8) % words == 0
    weight = ((arrays["tiled_codes"], arrays["tiled_step"], arrays["tiled_base"]) if bytes_lanes
              else (arrays["words"], arrays["scales"], arrays["offsets"]))
    programs = ((n_heads + n_kv_heads) * (head_dim // 2) + n_kv_heads * head_dim) // cfg["BN"]
    return fp4_gemv_rope_kernel[(programs,)](
        x, norm_w, *weight, bias if bias is not None else x, arrays["outlier_idx"],
        arrays["outlier_w"], cos, sin, q_out, k_out, v_out, N, K, packed.n_groups,
        len(packed.outlier_idx), eps, position, n_heads, n_kv_heads, q_out.stride(0),
        k_out.stride(0), v_out.stride(0), READING=packed.reading, G=packed.group_size,
        HAS_BIAS=bias is not None, EVEN=even, NORM=rms_norm is not None, BYTES=bytes_lanes,
        DEQ=cfg.get("DEQ", "bits"), BN=cfg["BN"],
        BK=_byte_chunk(packed.group_size, cfg.get("BK", 16)) if bytes_lanes else 16,
        BW=words, R=ROW_TILE,
        HALF_D=head_dim // 2, num_threads=cfg["num_threads"])
