"""The FP4 GEMV with integer products (GPUs): x as int8 or int16 per group.

For the uniform reading w = s (1 + q/16) + o, so a group's share of a row's
dot product is (s/16) sum(q x) + (s + o) sum(x). With x ~ d * xq per group
(xq integers, d = max|x| / XMAX) the first sum is d times an integer dot of
the 4-bit codes with xq, which NVIDIA GPUs take four byte products at a
time (dp4a: codes times int8 x) or two (dp2a: int16 x); the float work is
then one conversion and two FMAs per 32-bit word of 8 codes, where the
float GEMV (fp4_kernels.fp4_gemv_rows) spends an integer op or three and an
FMA on every code. Hand-written, this form ran at 0.77-0.87 of the H100's
copy bandwidth where the float one reached 0.4 (docs/fp4.md).

Two launches: quantize_x_kernel (one program per group) writes xq (in
planes of G/8 words, each plane pairing word for word with the group's code
words), d/16 per group (per half-group for int8), sum(x') per code word and
sum(x^2) per group (RMSNorm's, when it is fused); then fp4_gemv_idot_kernel
gives each work-item whole groups (kl.max_contiguous), so a group's code
words and each x plane are 16-byte loads, its integer dots are summed in
registers and its scale and offset are read and applied once, as the
hand-written form does. With cfg "FUSED_X" there is one launch: the GEMV
quantises the groups it reads itself (quantize_groups, the same
arithmetic). The dot products go through inline PTX where the
device compiles it (kl.inline_asm_elementwise), else through the same
integer arithmetic in the language (PoCL, the interpreter: the tests).

The price is x's rounding, |x - d xq| <= d/2: over SmolLM2's decode int16 x
(XBITS=16) left the top token as the float GEMV does, int8 x changed it at
6 % of positions (docs/fp4.md), so int16 is the precision the tuner's GPU
space offers. The float word kernel stays the GPU default: on the H100 this
one with its quantiser was 1.17-1.44x faster at 7B's G = 32 weights but
slower at 4096 x 4096, below, and at G = 64 (docs/fp4.md), and FUSED_X is
not timed there yet.
"""
import numpy as np

import kdsl
import kdsl.language as kl
from kdsl.device_features import has_inline_ptx

from .fp4_epilogue import fp4_rows_epilogue, fp4_store_rows
from .scratch import scratch

DP4A = "dp4a.u32.s32 $0, $1, $2, $3;"
DP2A_LO = "dp2a.lo.s32.u32 $0, $1, $2, $3;"
DP2A_HI = "dp2a.hi.s32.u32 $0, $1, $2, $3;"
X_GROUPS = 1                     # groups of x per quantiser program (quantize_x_kernel)


@kdsl.jit
def signed_lane(v, lane: kl.constexpr, BITS: kl.constexpr):
    """Lane `lane` of BITS-bit signed integers packed in the int32 block v, sign-extended."""
    return (v << (32 - BITS * (lane + 1))) >> (32 - BITS)


@kdsl.jit
def code_byte(c, lane: kl.constexpr):
    """Byte `lane` of the code word block c (int32; the codes' bytes are 0..15)."""
    return (c >> (8 * lane)) & 255


@kdsl.jit
def dot4(codes, xw, acc, PTX: kl.constexpr):
    """acc + the four byte products of codes (unsigned bytes) and xw (signed bytes)."""
    if PTX:
        acc = kl.inline_asm_elementwise(DP4A, "=r,r,r,r", (codes, xw, acc), kl.int32)
    else:
        for b in kl.static_range(4):
            acc += code_byte(codes, b) * signed_lane(xw, b, 8)
    return acc


@kdsl.jit
def dot2(xw, codes, acc, HIGH: kl.constexpr, PTX: kl.constexpr):
    """acc + the two products of xw's int16 lanes with bytes 0, 1 (bytes 2, 3
    with HIGH) of codes."""
    if PTX:
        if HIGH:
            acc = kl.inline_asm_elementwise(DP2A_HI, "=r,r,r,r", (xw, codes, acc), kl.int32)
        else:
            acc = kl.inline_asm_elementwise(DP2A_LO, "=r,r,r,r", (xw, codes, acc), kl.int32)
    else:
        for h in kl.static_range(2):
            acc += signed_lane(xw, h, 16) * code_byte(codes, 2 * HIGH + h)
    return acc


@kdsl.jit
def pack_lanes(q, lane, BITS: kl.constexpr, FIRST: kl.constexpr, PER_WORD: kl.constexpr):
    """The words packing q's [B, W, 4] integers, BITS each, PER_WORD to a word
    (4 for int8, 2 for int16), from column FIRST on; disjoint bits, so a sum is an or."""
    mask = (1 << BITS) - 1
    mine = (lane >= FIRST) & (lane < FIRST + PER_WORD)
    shift = kl.where(mine, BITS * (lane - FIRST), 0).to(kl.uint32)
    shifted = (q & mask).to(kl.uint32) << shift[None, None, :]
    return kl.sum(kl.where(mine[None, None, :], shifted, 0), axis=2)


@kdsl.jit
def group_load(ptr, k, g, K, n_groups, MASK: kl.constexpr):
    """ptr[k] for k [B, QW, 4] of groups g [B]; MASK as quantize_groups'."""
    if MASK == 0:
        v = kl.load(ptr + k)
    elif MASK == 1:
        v = kl.load(ptr + k, mask=(g < n_groups)[:, None, None], other=0.0)
    else:
        v = kl.load(ptr + k, mask=k < K, other=0.0)
    return v


@kdsl.jit
def quantize_groups(x_ptr, norm_ptr, g, K, n_groups, G: kl.constexpr, XBITS: kl.constexpr,
                    NORM: kl.constexpr, MASK: kl.constexpr, SPREAD: kl.constexpr):
    """Groups g (a [B] block) of x' = x (times the norm weight with NORM) as
    integers: (q_lo, q_hi, d_lo, d_hi, word_sums, squares). q_lo, q_hi
    [B, QW, 4] = round(x' / d) of the elements the low nibbles of code word w
    multiply (4w..4w+3) and the high ones' (G/2 + 4w..); d = max|x'| / XMAX
    over the group (int16, XMAX 32767) or over each half of it (int8, XMAX
    127: the halves the low and high nibbles multiply, so an outlier of x
    coarsens 32 of its neighbours, not 64); d_lo, d_hi [B] = the halves'
    d / 16; word_sums [B, QW] = the sum of x' over the 8 elements of code
    word w; squares [B] = the sum of x^2 (before the norm weight). Elements
    past K are 0. A work-item holds whole groups (kl.max_contiguous), so every
    sum and maximum stays in its registers; with SPREAD the work-items spread
    over a group's elements instead, and its sums go through local memory.
    MASK: 0 every element is in x; 1 K is whole groups, groups past n_groups
    are masked (one mask per group: its runs stay vector loads); 2 elements
    past K are masked."""
    QW = G // 8
    XMAX = 127.0 if XBITS == 8 else 32767.0
    rw = kl.arange(0, QW)
    lane = kl.arange(0, 4)
    k_lo = kl.max_contiguous(g[:, None, None] * G + 4 * rw[None, :, None] + lane[None, None, :],
                             1 if SPREAD else G // 2)
    k_hi = k_lo + G // 2
    lo = group_load(x_ptr, k_lo, g, K, n_groups, MASK)
    hi = group_load(x_ptr, k_hi, g, K, n_groups, MASK)
    squares = kl.sum(kl.sum(lo * lo + hi * hi, axis=2), axis=1)
    if NORM:
        lo = lo * group_load(norm_ptr, k_lo, g, K, n_groups, MASK)
        hi = hi * group_load(norm_ptr, k_hi, g, K, n_groups, MASK)
    amax_lo = kl.max(kl.max(kl.abs(lo), axis=2), axis=1)
    amax_hi = kl.max(kl.max(kl.abs(hi), axis=2), axis=1)
    if XBITS == 16:
        amax_lo = kl.maximum(amax_lo, amax_hi)
        amax_hi = amax_lo
    # groups of (near) zeros give 0: XMAX / amax would overflow below ~1e-35
    inv_lo = kl.where(amax_lo > 1e-30, XMAX / kl.maximum(amax_lo, 1e-30), 0.0)
    inv_hi = kl.where(amax_hi > 1e-30, XMAX / kl.maximum(amax_hi, 1e-30), 0.0)
    # round to nearest (half away from zero): the conversion truncates
    q_lo = (lo * inv_lo[:, None, None] + kl.where(lo >= 0.0, 0.5, -0.5)).to(kl.int32)
    q_hi = (hi * inv_hi[:, None, None] + kl.where(hi >= 0.0, 0.5, -0.5)).to(kl.int32)
    return (q_lo, q_hi, amax_lo * (0.0625 / XMAX), amax_hi * (0.0625 / XMAX),
            kl.sum(lo + hi, axis=2), squares)


@kdsl.jit
def x_plane(q_lo, q_hi, j: kl.constexpr, XBITS: kl.constexpr):
    """Plane j ([B, QW] words) of the groups' integers, word w pairing with code
    word w. int8: plane 0 the low nibbles' x (elements 4w..4w+3), plane 1 the
    high ones'. int16: plane j holds the two elements code word w's bytes
    2(j % 2), 2(j % 2) + 1 multiply, of the low nibbles for j < 2, else of
    the high ones."""
    lane = kl.arange(0, 4)
    if XBITS == 8:
        if j == 0:
            plane = pack_lanes(q_lo, lane, 8, 0, 4)
        else:
            plane = pack_lanes(q_hi, lane, 8, 0, 4)
    else:
        if j < 2:
            plane = pack_lanes(q_lo, lane, 16, 2 * (j % 2), 2)
        else:
            plane = pack_lanes(q_hi, lane, 16, 2 * (j % 2), 2)
    return plane


@kdsl.jit
def quantize_x_kernel(x_ptr, norm_ptr, xq_ptr, xd_ptr, xsw_ptr, sq_ptr, K, n_groups,
                      G: kl.constexpr, XBITS: kl.constexpr, NORM: kl.constexpr,
                      MASK: kl.constexpr, BX: kl.constexpr):
    """quantize_groups() of BX groups per program, stored: xq the groups'
    planes (x_plane(), G * XBITS / 32 words a group), xd[2g], xd[2g + 1] the
    halves' d / 16, xsw[g * G/8 + w] the word sums, sq[g] the squares. BX =
    1: the program's work-items spread over its group's elements (on the H100
    5.6-5.9 us a call at K = 4096-11008, where 32 whole groups per program,
    one per work-item, took 7.2-8.4: too few programs). MASK as
    quantize_groups'."""
    QW = G // 8
    XW = G * XBITS // 32
    g = kl.program_id(0) * BX + kl.arange(0, BX)
    rw = kl.arange(0, QW)
    q_lo, q_hi, d_lo, d_hi, word_sums, squares = quantize_groups(
        x_ptr, norm_ptr, g, K, n_groups, G, XBITS, NORM, MASK, BX == 1)
    live = g < n_groups
    kl.store(sq_ptr + g, squares, mask=live)
    kl.store(xsw_ptr + g[:, None] * QW + rw[None, :], word_sums, mask=live[:, None])
    kl.store(xd_ptr + 2 * g, d_lo, mask=live)
    kl.store(xd_ptr + 2 * g + 1, d_hi, mask=live)
    for j in kl.static_range(XW // QW):
        kl.store(xq_ptr + g[:, None] * XW + j * QW + rw[None, :], x_plane(q_lo, q_hi, j, XBITS),
                 mask=live[:, None])


@kdsl.jit
def idot_rows(x_ptr, norm_ptr, xq_ptr, xd_ptr, xsw_ptr, words_ptr, scales_ptr, offsets_ptr, rn,
              N, K, n_groups, G: kl.constexpr, XBITS: kl.constexpr, PTX: kl.constexpr,
              EVEN: kl.constexpr, X_MASK: kl.constexpr, NORM: kl.constexpr,
              FUSED_X: kl.constexpr, BN: kl.constexpr, BG: kl.constexpr):
    """sum over K of W x' for the BN rows rn (before the epilogue), BG whole
    groups of every row per step. A work-item holds whole groups: their QW =
    G/8 code words and the x words each plane pairs with them, runs that
    kl.max_contiguous lets it read 16 bytes at a time, so a group's scale
    and offset are read and applied once. x's integers come from
    quantize_x_kernel's buffers, or with FUSED_X from quantize_groups() on x
    itself in this kernel (each program quantises every group once per
    BN rows, and a GATED kernel once for its gate rows and again for its up
    rows: no second launch, nothing written to the buffers).
    Word w of a group holds elements 4w..4w+3 in its low nibbles and
    G/2 + 4w.. in its high ones; its products with xq are summed as integers
    over the group, then (s d/16) * dot + (s + o) * sum(x' over the group)
    (int8: a dot and a d per half)."""
    QW = G // 8
    XW = G * XBITS // 32                 # x words per group: XW / QW planes of QW words
    gi = kl.arange(0, BG)
    wi = kl.arange(0, QW)
    row_words = n_groups * QW
    # [BN, BG, QW]: the code words of group gi of each row
    w_offs = kl.max_contiguous(rn[:, None, None] * row_words + gi[None, :, None] * QW
                               + wi[None, None, :], QW)
    x_offs = kl.max_contiguous(gi[:, None] * XW + wi[None, :], QW)    # [BG, QW], plane 0
    xs_offs = kl.max_contiguous(gi[:, None] * QW + wi[None, :], QW)
    s_offs = rn[:, None] * n_groups + gi[None, :]
    acc = kl.zeros((BN, BG), dtype=kl.float32)
    for g0 in range(0, n_groups, BG):
        if EVEN:
            c = kl.load(words_ptr + g0 * QW + w_offs)
            s = kl.load(scales_ptr + g0 + s_offs).to(kl.float32)
            o = kl.load(offsets_ptr + g0 + s_offs).to(kl.float32)
        else:
            live_g = g0 + gi < n_groups
            live = (rn[:, None] < N) & live_g[None, :]
            c = kl.load(words_ptr + g0 * QW + w_offs, mask=live[:, :, None], other=0)
            s = kl.load(scales_ptr + g0 + s_offs, mask=live, other=0.0).to(kl.float32)
            o = kl.load(offsets_ptr + g0 + s_offs, mask=live, other=0.0).to(kl.float32)
        if FUSED_X:
            q_lo, q_hi, d_lo, d_hi, word_sums, _ = quantize_groups(
                x_ptr, norm_ptr, g0 + gi, K, n_groups, G, XBITS, NORM, X_MASK, False)
            sx = kl.sum(word_sums, axis=1)
        elif EVEN:
            d_lo = kl.load(xd_ptr + 2 * (g0 + gi))
            d_hi = kl.load(xd_ptr + 2 * (g0 + gi) + 1)
            sx = kl.sum(kl.load(xsw_ptr + g0 * QW + xs_offs), axis=1)
        else:
            d_lo = kl.load(xd_ptr + 2 * (g0 + gi), mask=live_g, other=0.0)
            d_hi = kl.load(xd_ptr + 2 * (g0 + gi) + 1, mask=live_g, other=0.0)
            sx = kl.sum(kl.load(xsw_ptr + g0 * QW + xs_offs, mask=live_g[:, None], other=0.0),
                        axis=1)
        c = c.to(kl.int32, bitcast=True)
        lo = c & 0x0F0F0F0F
        hi = (c >> 4) & 0x0F0F0F0F
        t_lo = kl.zeros((BN, BG, QW), kl.int32)        # int16 x: the only accumulator
        if XBITS == 8:
            t_hi = kl.zeros((BN, BG, QW), kl.int32)    # the high nibbles' (their own step)
        for j in kl.static_range(XW // QW):
            # plane j of x's words, word for word beside the codes
            if FUSED_X:
                xw = x_plane(q_lo, q_hi, j, XBITS)
            elif EVEN:
                xw = kl.load(xq_ptr + g0 * XW + x_offs + j * QW)
            else:
                xw = kl.load(xq_ptr + g0 * XW + x_offs + j * QW, mask=live_g[:, None], other=0)
            xw3 = xw.to(kl.int32, bitcast=True)[None, :, :]
            if XBITS == 8:
                # planes 0 and 1: the low and the high nibbles' x, four bytes a word
                if j == 0:
                    t_lo = dot4(lo, xw3, t_lo, PTX)
                else:
                    t_hi = dot4(hi, xw3, t_hi, PTX)
            elif j < 2:
                # planes 0, 1 pair with the low nibbles' bytes 0-1 and 2-3
                t_lo = dot2(xw3, lo, t_lo, j % 2, PTX)
            else:
                t_lo = dot2(xw3, hi, t_lo, j % 2, PTX)
        if XBITS == 8:
            # the halves' own steps: one more conversion and FMA per group than int16
            acc += s * (d_lo[None, :] * kl.sum(t_lo, axis=2).to(kl.float32)
                        + d_hi[None, :] * kl.sum(t_hi, axis=2).to(kl.float32)) \
                + (s + o) * sx[None, :]
        else:
            acc += (s * d_lo[None, :]) * kl.sum(t_lo, axis=2).to(kl.float32) \
                + (s + o) * sx[None, :]
    return kl.sum(acc, axis=1)


@kdsl.jit
def norm_squares(sq_ptr, n_groups, BW: kl.constexpr):
    """The per-group sums of x^2, gathered into a [BW] block (its sum is RMSNorm's)."""
    rw = kl.arange(0, BW)
    squares = kl.zeros((BW,), dtype=kl.float32)
    for i in range(0, n_groups, BW):
        squares += kl.load(sq_ptr + i + rw, mask=i + rw < n_groups, other=0.0)
    return squares


@kdsl.jit
def x_squares(x_ptr, K, BW: kl.constexpr):
    """The squares of x, summed into a [BW] block (its sum is RMSNorm's)."""
    rk = kl.arange(0, BW)
    squares = kl.zeros((BW,), dtype=kl.float32)
    for i in range(0, K, BW):
        v = kl.load(x_ptr + i + rk, mask=i + rk < K, other=0.0)
        squares += v * v
    return squares


@kdsl.jit
def fp4_gemv_idot_kernel(x_ptr, norm_ptr, xq_ptr, xd_ptr, xsw_ptr, sq_ptr, words_ptr,
                         scales_ptr, offsets_ptr, y_ptr, bias_ptr, oidx_ptr, ow_ptr, N, K,
                         n_groups, n_out, F, eps, G: kl.constexpr, XBITS: kl.constexpr,
                         PTX: kl.constexpr, HAS_BIAS: kl.constexpr, EVEN: kl.constexpr,
                         GATED: kl.constexpr, NORM: kl.constexpr, ACCUMULATE: kl.constexpr,
                         FUSED_X: kl.constexpr, X_MASK: kl.constexpr, BN: kl.constexpr,
                         BG: kl.constexpr):
    """fp4_gemv_kernel's y (same GATED, NORM, ACCUMULATE, bias and outliers)
    from x as integers: quantize_x_kernel's buffers, or with FUSED_X
    quantised here (idot_rows: X_MASK is quantize_groups' MASK for the
    groups a step reads); x_ptr and norm_ptr also serve the outlier
    channels."""
    rn = kl.program_id(0) * BN + kl.arange(0, BN)
    squares = kl.zeros((BG,), dtype=kl.float32)
    if NORM:
        if FUSED_X:
            squares = x_squares(x_ptr, K, BG)
        else:
            squares = norm_squares(sq_ptr, n_groups, BG)
    y = idot_rows(x_ptr, norm_ptr, xq_ptr, xd_ptr, xsw_ptr, words_ptr, scales_ptr, offsets_ptr,
                  rn, N, K, n_groups, G, XBITS, PTX, EVEN, X_MASK, NORM, FUSED_X, BN, BG)
    y = fp4_rows_epilogue(y, x_ptr, norm_ptr, squares, eps, bias_ptr, oidx_ptr, ow_ptr, rn, N,
                          K, n_out, HAS_BIAS, NORM)
    if GATED:
        up = idot_rows(x_ptr, norm_ptr, xq_ptr, xd_ptr, xsw_ptr, words_ptr, scales_ptr,
                       offsets_ptr, rn + F, N, K, n_groups, G, XBITS, PTX, EVEN, X_MASK, NORM,
                       FUSED_X, BN, BG)
        up = fp4_rows_epilogue(up, x_ptr, norm_ptr, squares, eps, bias_ptr, oidx_ptr, ow_ptr,
                               rn + F, N, K, n_out, HAS_BIAS, NORM)
        y = y * kl.sigmoid(y) * up
    fp4_store_rows(y_ptr, y, rn, F, EVEN, ACCUMULATE)


def x_buffers(device, n_groups, G, xbits):
    """The scratch tensors quantize_x_kernel writes on `device` (xq as uint32
    words, xd, xsw, sq), shared by every integer GEMV on it."""
    return (scratch("fp4_idot_xq", device, n_groups * G * xbits // 32, dtype=np.uint32),
            scratch("fp4_idot_xd", device, 2 * n_groups),
            scratch("fp4_idot_xsw", device, n_groups * G // 8),
            scratch("fp4_idot_sq", device, n_groups))


def launch_idot(x, norm_w, packed, arrays, tail, F, eps, cfg, fused, has_bias):
    """quantize_x_kernel into x_buffers() (BX groups per program), unless cfg
    "FUSED_X" has the GEMV quantise x itself; then fp4_gemv_idot_kernel with
    BN rows per program and BW code words (BW / (G/8) whole groups) of each
    per step. XBITS is 16 unless cfg says 8. num_threads should be at most
    the groups per step: more split x's blocks differently from the codes',
    and x then moves through local memory every step. Returns the GEMV's
    event. The dot products take inline PTX where the device compiles it
    (cfg "PTX": False turns it off, for measuring)."""
    (N, K), G, n_groups = packed.shape, packed.group_size, packed.n_groups
    xbits = cfg.get("XBITS", 16)
    if xbits not in (8, 16):
        raise ValueError(f"fp4.linear(): the integer GEMV's XBITS must be 8 or 16, got {xbits!r}")
    device = x.device
    xq, xd, xsw, sq = x_buffers(device, n_groups, G, xbits)
    even_k = K % G == 0
    fused_x = bool(cfg.get("FUSED_X", False))
    if not fused_x:
        bx = cfg.get("BX", X_GROUPS)
        quantize_x_kernel[(kdsl.cdiv(n_groups, bx),)](
            x, norm_w, xq, xd, xsw, sq, K, n_groups, G=G, XBITS=xbits, NORM=fused["NORM"],
            MASK=_x_mask(even_k, n_groups, bx), BX=bx,
            num_threads=min(64, G // 2) if bx == 1 else bx)
    groups = max(cfg["BW"] // (G // 8), 1)          # BW code words of a row per step
    even = F % cfg["BN"] == 0 and even_k and n_groups % groups == 0
    # the interpreter runs no device assembly: it takes the integer arithmetic
    ptx = (cfg.get("PTX", True) and not fp4_gemv_idot_kernel.interpret
           and has_inline_ptx(device))
    return fp4_gemv_idot_kernel[(kdsl.cdiv(F, cfg["BN"]),)](
        x, norm_w, xq, xd, xsw, sq, arrays["words"], arrays["scales"], arrays["offsets"], *tail,
        N, K, n_groups, len(packed.outlier_idx), F, eps, G=G, XBITS=xbits, PTX=ptx,
        HAS_BIAS=has_bias, **fused, EVEN=even, FUSED_X=fused_x,
        X_MASK=_x_mask(even_k, n_groups, groups), BN=cfg["BN"], BG=groups,
        num_threads=cfg["num_threads"])


def _x_mask(even_k, n_groups, per_step):
    """quantize_groups' MASK for groups read per_step at a time."""
    if even_k:
        return 0 if n_groups % per_step == 0 else 1
    return 2
