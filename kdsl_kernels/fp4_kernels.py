"""The FP4 kernels in the language: a dequantising GEMV (decode) and GEMM (prefill).

Both read the packed layout of kdsl_kernels/fp4.py: per row, groups of G
weights stored as G/2 bytes (low nibble element j, high nibble element
j + G/2) with an fp16 scale and offset per group. A code becomes its value
in registers: m = as_float(0x3F800000 | q << 19) = 1 + q/16 for the uniform
"e0m4" reading, as_float((q + 113) << 23) = 2**(q - 14) for "e4m0" (the fp32
bit patterns with the fp16 trick's meaning), then w = s * m + o.

GEMVs: fp4_gemv_kernel (GPUs) reads codes as 32-bit words; fp4_gemv_bytes_kernel
(CPUs) takes a group's bytes as lanes and fp32 per-group step/base. Both can
apply SwiGLU to a gate/up weight's two row halves (GATED). GEMMs:
fp4_gemm_kernel (register tiles, GPUs) and fp4_gemm_acc_kernel (weight-
stationary, CPUs). The CPU kernels read the row-tiled copy of the layout
(PackedWeight.tiled_layout: rows interleaved in tiles of ROW_TILE, so a
program's reads are one stream) with fp32 step/base; the GPU ones the rows.
"""
import numpy as np

import kdsl
import kdsl.language as kl
from kdsl.device_features import has_int16_pair_dot

from .activations import swiglu
from .elementwise import add, copy
from .norms import rms_norm as rms_norm_rows
from .fp4 import PackedWeight
from .fp4_epilogue import fp4_rows_epilogue, fp4_store_rows
from .fp4_idot import launch_idot
from .row_tiles import ROW_TILE
from .int16_x import int16_x_groups
from .configs import RUNS, blocks_per_program
from .matmul import panels_kernel, store_tile
from .scratch import scratch


@kdsl.jit
def fp4_mantissa(q, READING: kl.constexpr):
    """m(q) of the reading from the 4-bit code q (an int block), by bit operations only."""
    if READING == "e0m4":
        bits = (q.to(kl.uint32) << 19) | 0x3F800000
    else:
        bits = (q.to(kl.uint32) + 113) << 23
    return bits.to(kl.float32, bitcast=True)


@kdsl.jit
def fp4_code_value(q, READING: kl.constexpr):
    """v(q) of PackedWeight.group_affine(): q itself for the uniform reading, m(q) otherwise."""
    if READING == "e0m4":
        v = q.to(kl.float32)
    else:
        v = fp4_mantissa(q, READING)
    return v


@kdsl.jit
def fp4_dequant(q, s, o, READING: kl.constexpr, DEQ: kl.constexpr):
    """w = s * m(q) + o. DEQ "bits" builds m(q) from bit patterns; "convert"
    (uniform reading only) converts q to float instead: w = q * s/16 + (s + o).
    (The GPU GEMV's "factor" and "scaled" never form w: see fp4_gemv_rows.)"""
    if DEQ == "convert" and READING == "e0m4":
        w = q.to(kl.float32) * (s * 0.0625) + (s + o)
    else:
        w = fp4_mantissa(q, READING) * s + o
    return w


@kdsl.jit
def fp4_word_x(x_base, b, k_lo, K, HALF: kl.constexpr, EVEN: kl.constexpr):
    """The x that byte b's low and high nibbles multiply, for every lane (a
    word of the GPU GEMV, a byte of the CPU one, b = 0); k_lo: the lanes'
    low-nibble element indices, for the mask past K."""
    if EVEN:
        x_lo = kl.load(x_base + b)
        x_hi = kl.load(x_base + HALF + b)
    else:
        x_lo = kl.load(x_base + b, mask=k_lo + b < K, other=0.0)
        x_hi = kl.load(x_base + HALF + b, mask=k_lo + b + HALF < K, other=0.0)
    return x_lo, x_hi


@kdsl.jit
def fp4_lane_x(x_base, norm_base, b, k_lo, K, HALF: kl.constexpr, EVEN: kl.constexpr,
               NORM: kl.constexpr):
    """fp4_word_x's x, times the norm weight at the same elements with NORM,
    and x^2 before that weight (the norm's sum of squares takes it)."""
    x_lo, x_hi = fp4_word_x(x_base, b, k_lo, K, HALF, EVEN)
    squares = x_lo * x_lo + x_hi * x_hi
    if NORM:
        n_lo, n_hi = fp4_word_x(norm_base, b, k_lo, K, HALF, EVEN)
        x_lo = x_lo * n_lo
        x_hi = x_hi * n_hi
    return x_lo, x_hi, squares


@kdsl.jit
def fp4_gemv_rows(x_ptr, norm_ptr, words_ptr, scales_ptr, offsets_ptr, bias_ptr, oidx_ptr,
                  ow_ptr, rn, N, K, n_groups, n_out, eps, READING: kl.constexpr,
                  DEQ: kl.constexpr, G: kl.constexpr, HAS_BIAS: kl.constexpr,
                  EVEN: kl.constexpr, NORM: kl.constexpr, BN: kl.constexpr, BW: kl.constexpr):
    """(W x' + bias)[rn] for the BN weight rows rn, BW 32-bit words (8 codes
    each) of every row per step; x' = x, or rms_norm(x) * norm weight with NORM
    (fp4_norm_x).

    The packed codes are read once, as words; word w of a group holds the
    codes of elements 4w..4w+3 (low nibbles) and G/2 + 4w.. (high nibbles),
    so byte b of every word in a step pairs with x at a fixed offset. Each
    word takes its group's scale and offset (BW >= G/8, so a word never
    straddles groups). Partial sums stay elementwise in a BN x BW block and
    are reduced across K once, at the end."""
    QW = G // 8
    HALF = G // 2
    rw = kl.arange(0, BW)
    grp = rw // QW
    x_off = grp * G + (rw % QW) * 4
    row_words = n_groups * QW
    w_offs = rn[:, None] * row_words + rw[None, :]
    s_offs = rn[:, None] * n_groups + grp[None, :]
    acc = kl.zeros((BN, BW), dtype=kl.float32)
    squares = kl.zeros((BW,), dtype=kl.float32)
    for step in range(0, row_words, BW):
        g0 = step // QW
        x_base = x_ptr + g0 * G + x_off
        n_base = norm_ptr + g0 * G + x_off
        if EVEN:
            c = kl.load(words_ptr + step + w_offs)
            s = kl.load(scales_ptr + g0 + s_offs)
            o = kl.load(offsets_ptr + g0 + s_offs)
        else:
            live = (rn[:, None] < N) & (step + rw[None, :] < row_words)
            c = kl.load(words_ptr + step + w_offs, mask=live, other=0)
            s = kl.load(scales_ptr + g0 + s_offs, mask=live, other=0.0)
            o = kl.load(offsets_ptr + g0 + s_offs, mask=live, other=0.0)
        if DEQ == "factor" or DEQ == "scaled":
            # s * sum(m x) + o * sum(x) over the word's 8 codes: per code one FMA and, for
            # m from bits, three integer ops on the H100 (a shift and two LOP3s: a LOP3
            # takes one immediate); no int-to-float conversion, and sum(x) is shared by
            # the BN rows. "scaled" needs one integer op and a conversion per code.
            t = kl.zeros((BN, BW), dtype=kl.float32)
            sx = kl.zeros((BW,), dtype=kl.float32)
            for b in kl.static_range(4):
                x_lo, x_hi, sq = fp4_lane_x(x_base, n_base, b, g0 * G + x_off, K, HALF, EVEN,
                                            NORM)
                if NORM:
                    squares += sq
                # one statement per product: each compiles to one FMA into t, where
                # t += a*b + c*d costs a multiply, an FMA and an add (no reassociation)
                if DEQ == "scaled" and READING == "e0m4":
                    # q * 2**p where the code sits (bits p..p+3 of the word, masked
                    # in place: one integer op), converted; x times 2**-p to match,
                    # once per x for all BN rows. The power-of-two reading takes "factor".
                    t += (c & (15 << (8 * b))).to(kl.float32) * (x_lo * 2.0 ** (-8 * b))[None, :]
                    t += ((c & (15 << (8 * b + 4))).to(kl.float32)
                          * (x_hi * 2.0 ** (-8 * b - 4))[None, :])
                else:
                    t += fp4_mantissa((c >> (8 * b)) & 15, READING) * x_lo[None, :]
                    t += fp4_mantissa((c >> (8 * b + 4)) & 15, READING) * x_hi[None, :]
                sx += x_lo + x_hi
            if DEQ == "scaled" and READING == "e0m4":
                # w = s * (1 + q/16) + o = (s/16) * q + (s + o)
                acc += (s * 0.0625) * t + (s + o) * sx[None, :]
            else:
                acc += s * t + o * sx[None, :]
        else:
            for b in kl.static_range(4):
                x_lo, x_hi, sq = fp4_lane_x(x_base, n_base, b, g0 * G + x_off, K, HALF, EVEN,
                                            NORM)
                if NORM:
                    squares += sq
                w_lo = fp4_dequant((c >> (8 * b)) & 15, s, o, READING, DEQ)
                w_hi = fp4_dequant((c >> (8 * b + 4)) & 15, s, o, READING, DEQ)
                acc += w_lo * x_lo[None, :]
                acc += w_hi * x_hi[None, :]
    y = kl.sum(acc, axis=1)
    return fp4_rows_epilogue(y, x_ptr, norm_ptr, squares, eps, bias_ptr, oidx_ptr, ow_ptr, rn,
                             N, K, n_out, HAS_BIAS, NORM)


@kdsl.jit
def fp4_gemv_kernel(x_ptr, norm_ptr, words_ptr, scales_ptr, offsets_ptr, y_ptr, bias_ptr,
                    oidx_ptr, ow_ptr, N, K, n_groups, n_out, F, eps,
                    READING: kl.constexpr, DEQ: kl.constexpr, G: kl.constexpr,
                    HAS_BIAS: kl.constexpr, EVEN: kl.constexpr, GATED: kl.constexpr,
                    NORM: kl.constexpr, ACCUMULATE: kl.constexpr, BN: kl.constexpr,
                    BW: kl.constexpr):
    """y = W x (+ bias) for BN rows per program (fp4_gemv_rows); GATED: W holds
    gate rows 0..F-1 and up rows F..2F-1, and y[i] = silu(gate_i) * up_i (SwiGLU),
    so a decode step's MLP needs no separate activation launch. NORM: x is
    RMS-normalised (weight norm_ptr, eps) on the way in; ACCUMULATE: y += the
    result. With both, a decode step needs no norm or residual-add launches."""
    rn = kl.program_id(0) * BN + kl.arange(0, BN)
    y = fp4_gemv_rows(x_ptr, norm_ptr, words_ptr, scales_ptr, offsets_ptr, bias_ptr, oidx_ptr,
                      ow_ptr, rn, N, K, n_groups, n_out, eps, READING, DEQ, G, HAS_BIAS, EVEN,
                      NORM, BN, BW)
    if GATED:
        up = fp4_gemv_rows(x_ptr, norm_ptr, words_ptr, scales_ptr, offsets_ptr, bias_ptr,
                           oidx_ptr, ow_ptr, rn + F, N, K, n_groups, n_out, eps, READING, DEQ,
                           G, HAS_BIAS, EVEN, NORM, BN, BW)
        y = y * kl.sigmoid(y) * up
    fp4_store_rows(y_ptr, y, rn, F, EVEN, ACCUMULATE)


@kdsl.jit
def fp4_tile_block(row0, n_groups, BN: kl.constexpr, R: kl.constexpr, ALIGNED: kl.constexpr):
    """Block index of rows row0 + arange(BN)'s group 0 in the row-tiled layout
    (PackedWeight.tiled_layout, R rows per tile); group g's is this + g * R.

    ALIGNED: row0 is a multiple of BN, and BN divides R or R divides BN. Then
    row i's tile and place in it are row0's plus constants, (row0 // R + i //
    R) and (row0 % R + i % R), which the device compiler folds: it sees the
    BN rows' blocks at consecutive addresses and loads them as vectors.
    Computed per row instead ((row0 + i) // R), the CPU GEMV's code loads
    were one scalar load per row, and its address arithmetic spilled."""
    i = kl.arange(0, BN)
    if ALIGNED:
        block = (row0 // R + i // R) * (n_groups * R) + row0 % R + i % R
    else:
        rn = row0 + i
        block = (rn // R) * (n_groups * R) + rn % R
    return block


@kdsl.jit
def fp4_gemv_bytes_rows(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, bias_ptr, oidx_ptr,
                        ow_ptr, row0, N, K, n_groups, n_out, eps, READING: kl.constexpr,
                        G: kl.constexpr, HAS_BIAS: kl.constexpr, EVEN: kl.constexpr,
                        NORM: kl.constexpr, BN: kl.constexpr, BK: kl.constexpr, R: kl.constexpr,
                        ALIGNED: kl.constexpr):
    """(W x' + bias)[rn] for the BN weight rows rn = row0 + arange(BN), one
    group per step: the CPU GEMV, on the row-tiled layout (codes, step, base;
    R rows per tile; ALIGNED as in fp4_tile_block); x' as in fp4_gemv_rows.

    The lanes are BK of a group's G/2 bytes, so the x each byte's low and
    high nibble multiplies run contiguously (vector loads, no gathers); a
    group is taken in G/2 / BK unrolled chunks so the BN x BK accumulator
    stays in registers (with a whole G = 64 group as lanes, BN x 32 floats
    spilled on AVX2 and the kernel ran 1.4-1.9x slower). With w = step *
    v(q) + base per group, a row's group contributes step * sum(v(q) x) +
    base * sum(x): the sum of x is taken once per group for all BN rows, and
    the scaling is one multiply-add per byte lane."""
    HALF = G // 2
    rj = kl.arange(0, BK)
    rn = row0 + kl.arange(0, BN)
    block0 = fp4_tile_block(row0, n_groups, BN, R, ALIGNED)
    acc = kl.zeros((BN, BK), dtype=kl.float32)
    y = kl.zeros((BN,), dtype=kl.float32)
    squares = kl.zeros((BK,), dtype=kl.float32)
    for g in range(0, n_groups):
        block = block0 + g * R
        if EVEN:
            a = kl.load(step_ptr + block)
            b = kl.load(base_ptr + block)
        else:
            a = kl.load(step_ptr + block, mask=rn < N, other=0.0)
            b = kl.load(base_ptr + block, mask=rn < N, other=0.0)
        xs = kl.zeros((BK,), dtype=kl.float32)
        for j in kl.static_range(0, HALF, BK):
            c_ptrs = codes_ptr + block[:, None] * HALF + j + rj[None, :]
            lo = g * G + j + rj
            if EVEN:
                c = kl.load(c_ptrs)
            else:
                c = kl.load(c_ptrs, mask=rn[:, None] < N, other=0)
            x_lo, x_hi, sq = fp4_lane_x(x_ptr + lo, norm_ptr + lo, 0, lo, K, HALF, EVEN, NORM)
            if NORM:
                squares += sq
            t = (fp4_code_value(c & 15, READING) * x_lo[None, :]
                 + fp4_code_value(c >> 4, READING) * x_hi[None, :])
            acc += t * a[:, None]
            xs += x_lo + x_hi
        y += b * kl.sum(xs, axis=0)
    y += kl.sum(acc, axis=1)
    return fp4_rows_epilogue(y, x_ptr, norm_ptr, squares, eps, bias_ptr, oidx_ptr, ow_ptr, rn,
                             N, K, n_out, HAS_BIAS, NORM)


@kdsl.jit
def fp4_tile_split(row0, n_groups, BN: kl.constexpr, R: kl.constexpr, ALIGNED: kl.constexpr):
    """fp4_tile_block's blocks as (first, lanes): a scalar for the program and
    per-lane offsets, first + lanes being the rows' group-0 blocks. With
    ALIGNED the lane offsets are constants apart from the tile stride, so
    the compiler sees runs of consecutive blocks and loads the BN steps or
    bases as one vector (added lane by lane they were 8 scalar loads,
    gathered into a vector with vinsertps)."""
    i = kl.arange(0, BN)
    if ALIGNED:
        first = (row0 // R) * (n_groups * R) + row0 % R
        lanes = (i // R) * (n_groups * R) + i % R
    else:
        first = 0
        lanes = fp4_tile_block(row0, n_groups, BN, R, ALIGNED)
    return first, lanes


@kdsl.jit
def fp4_int16_rows(codes_ptr, step_ptr, base_ptr, xq_ptr, xs_ptr, row0, N, n_groups,
                   G: kl.constexpr, BN: kl.constexpr, R: kl.constexpr, EVEN: kl.constexpr,
                   ALIGNED: kl.constexpr, PLANES: kl.constexpr):
    """(W x')[rn] for the BN rows rn = row0 + arange(BN) against the int16 x'
    of int16_x_groups: per group  step * d * (q . xq) + base * sum(x'), q . xq
    an integer kl.dot of the group's 4-bit codes against its int16 x'.

    PLANES: codes_ptr is the codes as 16-bit words, and x' is in the planes'
    order (int16_x.nibble_planes_x_order): the group's G/4 words are read as
    four planes of int16 lanes, each word's nibble p shifted down and masked,
    so a dot over the G slots pairs plane p with its x'. The byte form
    widens each of its G/2-byte loads to int16 (pmovzxbw) before the
    products; the words need no widening."""
    SPAN = G // 2 // (1 + PLANES)         # code units (bytes, or 16-bit words) per group
    rk = kl.arange(0, G)
    rn = row0 + kl.arange(0, BN)
    first, lanes = fp4_tile_split(row0, n_groups, BN, R, ALIGNED)
    y = kl.zeros((BN,), dtype=kl.float32)
    for g in range(0, n_groups):
        block = first + g * R
        if EVEN:
            a = kl.load(step_ptr + block + lanes)
            b = kl.load(base_ptr + block + lanes)
        else:
            a = kl.load(step_ptr + block + lanes, mask=rn < N, other=0.0)
            b = kl.load(base_ptr + block + lanes, mask=rn < N, other=0.0)
        # slot k of the group: nibble k // SPAN of code unit k % SPAN, the units bytes
        # (the low nibble of byte k for k < G/2, else the high of byte k - G/2) or,
        # with PLANES, 16-bit words (SPAN = G/4: plane k // SPAN of word k % SPAN)
        c_ptrs = codes_ptr + block * SPAN + (lanes * SPAN)[:, None] + (rk % SPAN)[None, :]
        if EVEN:
            c = kl.load(c_ptrs)
        else:
            c = kl.load(c_ptrs, mask=rn[:, None] < N, other=0)
        nibbles = (c >> (rk // SPAN * 4)[None, :]) & 15
        if PLANES:
            q = nibbles.to(kl.int16)
        else:
            q = nibbles.to(kl.uint8)
        qx = kl.sum(kl.dot(q, kl.load(xq_ptr + g * G + rk)[:, None]), axis=1)
        y += qx.to(kl.float32) * (a * kl.load(xs_ptr + 2 * g)) + b * kl.load(xs_ptr + 2 * g + 1)
    return y


@kdsl.jit
def fp4_gemv_int16_kernel(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, y_ptr, bias_ptr,
                          oidx_ptr, ow_ptr, xq_ptr, xs_ptr, N, K, n_groups, n_out, F, eps,
                          G: kl.constexpr, HAS_BIAS: kl.constexpr, EVEN: kl.constexpr,
                          GATED: kl.constexpr, NORM: kl.constexpr, ACCUMULATE: kl.constexpr,
                          BN: kl.constexpr, T: kl.constexpr, R: kl.constexpr,
                          ALIGNED: kl.constexpr, PLANES: kl.constexpr):
    """fp4_gemv_bytes_kernel for the uniform reading with integer products
    (same arguments, row-tiled layout, plus a scratch slot per program:
    n_groups * G int16 at xq_ptr, 2 * n_groups floats at xs_ptr). Each
    program converts x' to int16 once (int16_x_groups), then takes T tiles
    of BN rows one after another, each against the converted x': on PoCL x86
    the integer dot is pmaddwd (16 products per instruction, codegen_opencl)
    where the float form spends a conversion and an FMA on every code. The
    tiles go in turn, not side by side, so a program streams one tile of
    the weight from memory at a time (two, gate and up, when GATED); the
    conversion is shared by T tiles and, GATED, by the gate and up rows."""
    pid = kl.program_id(0)
    xq_ptr += pid * (n_groups * G)
    xs_ptr += pid * (2 * n_groups)
    squares = int16_x_groups(x_ptr, norm_ptr, xq_ptr, xs_ptr, K, n_groups, G, EVEN, NORM,
                             PLANES)
    for t in range(0, T):
        row0 = (pid * T + t) * BN
        rn = row0 + kl.arange(0, BN)
        y = fp4_int16_rows(codes_ptr, step_ptr, base_ptr, xq_ptr, xs_ptr, row0, N, n_groups, G,
                           BN, R, EVEN, ALIGNED, PLANES)
        y = fp4_rows_epilogue(y, x_ptr, norm_ptr, squares, eps, bias_ptr, oidx_ptr, ow_ptr, rn,
                              N, K, n_out, HAS_BIAS, NORM)
        if GATED:
            up = fp4_int16_rows(codes_ptr, step_ptr, base_ptr, xq_ptr, xs_ptr, row0 + F, N,
                                n_groups, G, BN, R, EVEN, ALIGNED, PLANES)
            up = fp4_rows_epilogue(up, x_ptr, norm_ptr, squares, eps, bias_ptr, oidx_ptr,
                                   ow_ptr, rn + F, N, K, n_out, HAS_BIAS, NORM)
            y = y * kl.sigmoid(y) * up
        fp4_store_rows(y_ptr, y, rn, F, EVEN, ACCUMULATE)


@kdsl.jit
def fp4_gemv_bytes_kernel(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, y_ptr, bias_ptr,
                          oidx_ptr, ow_ptr, N, K, n_groups, n_out, F, eps,
                          READING: kl.constexpr, G: kl.constexpr, HAS_BIAS: kl.constexpr,
                          EVEN: kl.constexpr, GATED: kl.constexpr, NORM: kl.constexpr,
                          ACCUMULATE: kl.constexpr, BN: kl.constexpr, BK: kl.constexpr,
                          R: kl.constexpr, ALIGNED: kl.constexpr):
    """y = W x (+ bias) for BN rows per program (fp4_gemv_bytes_rows); GATED as
    in fp4_gemv_kernel: y[i] = silu(gate_i) * up_i, up row i at F + i; NORM and
    ACCUMULATE as there; ALIGNED as in fp4_tile_block, for the up rows too."""
    row0 = kl.program_id(0) * BN
    rn = row0 + kl.arange(0, BN)
    y = fp4_gemv_bytes_rows(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, bias_ptr, oidx_ptr,
                            ow_ptr, row0, N, K, n_groups, n_out, eps, READING, G, HAS_BIAS, EVEN,
                            NORM, BN, BK, R, ALIGNED)
    if GATED:
        up = fp4_gemv_bytes_rows(x_ptr, norm_ptr, codes_ptr, step_ptr, base_ptr, bias_ptr,
                                 oidx_ptr, ow_ptr, row0 + F, N, K, n_groups, n_out, eps, READING,
                                 G, HAS_BIAS, EVEN, NORM, BN, BK, R, ALIGNED)
        y = y * kl.sigmoid(y) * up
    fp4_store_rows(y_ptr, y, rn, F, EVEN, ACCUMULATE)


@kdsl.jit
def fp4_gemm_kernel(a_ptr, codes_ptr, scales_ptr, offsets_ptr, c_ptr, bias_ptr,
                    oidx_ptr, ow_ptr, M, N, K, n_groups, n_out, stride_am, stride_cm,
                    READING: kl.constexpr, DEQ: kl.constexpr, G: kl.constexpr,
                    HAS_BIAS: kl.constexpr, EVEN: kl.constexpr, BM: kl.constexpr, BN: kl.constexpr,
                    BO: kl.constexpr):
    """C = A @ W.T (+ bias) for one BM x BN tile per program.

    Each step dequantises one group of the BN weight rows into two G/2 x BN
    tiles (the low and the high nibbles) in registers and feeds them to
    kl.dot with the matching halves of the A tile, so the dequantised weight
    never goes to global memory."""
    HALF = G // 2
    rm = kl.program_id(0) * BM + kl.arange(0, BM)
    rn = kl.program_id(1) * BN + kl.arange(0, BN)
    rj = kl.arange(0, HALF)
    row_bytes = n_groups * HALF
    acc = kl.zeros((BM, BN), dtype=kl.float32)
    for g in range(0, n_groups):
        k0 = g * G
        a_lo_ptrs = a_ptr + rm[:, None] * stride_am + (k0 + rj)[None, :]
        c_ptrs = codes_ptr + rn[None, :] * row_bytes + (g * HALF + rj)[:, None]
        if EVEN:
            a_lo = kl.load(a_lo_ptrs)
            a_hi = kl.load(a_lo_ptrs + HALF)
            c = kl.load(c_ptrs)
            s = kl.load(scales_ptr + rn * n_groups + g)
            o = kl.load(offsets_ptr + rn * n_groups + g)
        else:
            a_lo = kl.load(a_lo_ptrs, mask=(rm[:, None] < M) & (k0 + rj[None, :] < K), other=0.0)
            a_hi = kl.load(a_lo_ptrs + HALF,
                           mask=(rm[:, None] < M) & (k0 + HALF + rj[None, :] < K), other=0.0)
            c = kl.load(c_ptrs, mask=rn[None, :] < N, other=0)
            s = kl.load(scales_ptr + rn * n_groups + g, mask=rn < N, other=0.0)
            o = kl.load(offsets_ptr + rn * n_groups + g, mask=rn < N, other=0.0)
        w_lo = fp4_dequant(c & 15, s[None, :], o[None, :], READING, DEQ)
        w_hi = fp4_dequant(c >> 4, s[None, :], o[None, :], READING, DEQ)
        acc = kl.dot(a_lo, w_lo, acc)
        acc = kl.dot(a_hi, w_hi, acc)
    ro = kl.arange(0, BO)
    for o0 in range(0, n_out, BO):
        # outlier channels: gather their columns of A, multiply by the fp16 residuals
        idx = kl.load(oidx_ptr + o0 + ro, mask=o0 + ro < n_out, other=0)
        a_out = kl.load(a_ptr + rm[:, None] * stride_am + idx[None, :],
                        mask=(rm[:, None] < M) & (o0 + ro[None, :] < n_out), other=0.0)
        w_out = kl.load(ow_ptr + rn[None, :] * n_out + (o0 + ro)[:, None],
                        mask=(rn[None, :] < N) & (o0 + ro[:, None] < n_out), other=0.0)
        acc = kl.dot(a_out, w_out, acc)
    store_tile(c_ptr, acc, bias_ptr, rm, rn, M, N, stride_cm, HAS_BIAS, EVEN)


@kdsl.jit
def fp4_acc_rows(a_ptr, c_ptr, w_lo_ptrs, m0, rn, k_lo, M, N, K, stride_am, stride_cm,
                 MASKED: kl.constexpr, HALF: kl.constexpr, BM: kl.constexpr, BN: kl.constexpr,
                 BK: kl.constexpr):
    """C[m0:m0+BM, rn] += A[rows, low-nibble k] @ w_lo + A[rows, high-nibble k] @ w_hi,
    the two dequantised [BK, BN] tiles read back from w_lo_ptrs (the program's
    scratch, so they arrive as contiguous rows the compiler vectorises)."""
    rm = m0 + kl.arange(0, BM)
    rj = kl.arange(0, BK)
    a_lo_ptrs = a_ptr + rm[:, None] * stride_am + (k_lo + rj)[None, :]
    c_out = c_ptr + rm[:, None] * stride_cm + rn[None, :]
    w_lo = kl.load(w_lo_ptrs)
    w_hi = kl.load(w_lo_ptrs + BK * BN)
    if MASKED:
        a_lo = kl.load(a_lo_ptrs, mask=(rm[:, None] < M) & (k_lo + rj[None, :] < K), other=0.0)
        a_hi = kl.load(a_lo_ptrs + HALF,
                       mask=(rm[:, None] < M) & (k_lo + HALF + rj[None, :] < K), other=0.0)
        live = (rm[:, None] < M) & (rn[None, :] < N)
        acc = kl.dot(a_hi, w_hi, kl.dot(a_lo, w_lo, kl.load(c_out, mask=live, other=0.0)))
        kl.store(c_out, acc, mask=live)
    else:
        a_lo = kl.load(a_lo_ptrs)
        a_hi = kl.load(a_lo_ptrs + HALF)
        kl.store(c_out, kl.dot(a_hi, w_hi, kl.dot(a_lo, w_lo, kl.load(c_out))))


@kdsl.jit
def fp4_gemm_acc_kernel(a_ptr, codes_ptr, step_ptr, base_ptr, c_ptr, bias_ptr,
                        oidx_ptr, ow_ptr, w_ptr, M, N, K, n_groups, n_out, stride_am, stride_cm,
                        READING: kl.constexpr, G: kl.constexpr, HAS_BIAS: kl.constexpr,
                        EVEN: kl.constexpr, BM: kl.constexpr, BN: kl.constexpr, BK: kl.constexpr,
                        BO: kl.constexpr, R: kl.constexpr, ALIGNED: kl.constexpr):
    """C = A @ W.T (+ bias) for BN columns of C (BN weight rows) and all M rows
    per program: the weight stationary, the accumulator in memory (for CPUs),
    on the row-tiled layout (codes, step, base; R rows per tile).

    Each step dequantises BK bytes of one group of the BN weight rows (BK
    low-nibble and BK high-nibble codes, BK <= G/2; w = step * v(q) + base)
    once, into this program's 2 x BK x BN floats of the scratch w_ptr, then
    runs over all rows of A in blocks of BM: load the block's [BM, BN]
    accumulator from C (M x BN floats, which stay in the cache), add two
    register-tiled kl.dot products, store it back. So each weight is
    dequantised once per call, not once per BM rows of A as in
    fp4_gemm_kernel. C starts as the bias. EVEN: N a multiple of BN and K of
    G (then no masks: rows of A past the last full block of BM are done one
    at a time)."""
    HALF = G // 2
    rn = kl.program_id(0) * BN + kl.arange(0, BN)
    ri = kl.arange(0, BM)
    rj = kl.arange(0, BK)
    row_bytes = n_groups * HALF
    m_full = M - M % BM
    block0 = fp4_tile_block(kl.program_id(0) * BN, n_groups, BN, R, ALIGNED)
    w_lo_ptrs = (w_ptr + kl.program_id(0) * (2 * BK * BN) + rj[:, None] * BN
                 + kl.arange(0, BN)[None, :])
    if HAS_BIAS:
        init = kl.load(bias_ptr + rn, mask=rn < N, other=0.0)
    else:
        init = kl.zeros((BN,), dtype=kl.float32)
    for m0 in range(0, M, BM):
        rm = m0 + ri
        kl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :],
                 kl.zeros((BM, BN), dtype=kl.float32) + init[None, :],
                 mask=(rm[:, None] < M) & (rn[None, :] < N))
    for jb in range(0, row_bytes, BK):
        g = jb // HALF
        k_lo = g * G + jb % HALF
        block = block0 + g * R
        c_ptrs = codes_ptr + block[None, :] * HALF + (jb % HALF + rj)[:, None]
        if EVEN:
            c = kl.load(c_ptrs)
            s = kl.load(step_ptr + block)
            o = kl.load(base_ptr + block)
        else:
            c = kl.load(c_ptrs, mask=rn[None, :] < N, other=0)
            s = kl.load(step_ptr + block, mask=rn < N, other=0.0)
            o = kl.load(base_ptr + block, mask=rn < N, other=0.0)
        kl.store(w_lo_ptrs, fp4_code_value(c & 15, READING) * s[None, :] + o[None, :])
        kl.store(w_lo_ptrs + BK * BN, fp4_code_value(c >> 4, READING) * s[None, :] + o[None, :])
        # blocks of BM rows, then the rows past the last full block one by one
        # (unmasked single rows run far faster than a masked block on PoCL)
        for m0 in range(0, m_full, BM):
            fp4_acc_rows(a_ptr, c_ptr, w_lo_ptrs, m0, rn, k_lo, M, N, K, stride_am,
                         stride_cm, not EVEN, HALF, BM, BN, BK)
        for m0 in range(m_full, M):
            fp4_acc_rows(a_ptr, c_ptr, w_lo_ptrs, m0, rn, k_lo, M, N, K, stride_am,
                         stride_cm, not EVEN, HALF, 1, BN, BK)
    ro = kl.arange(0, BO)
    for o0 in range(0, n_out, BO):
        # outlier channels: their fp16 residual rows, then every row block of A
        w_out = kl.load(ow_ptr + rn[None, :] * n_out + (o0 + ro)[:, None],
                        mask=(rn[None, :] < N) & (o0 + ro[:, None] < n_out), other=0.0)
        idx = kl.load(oidx_ptr + o0 + ro, mask=o0 + ro < n_out, other=0)
        for m0 in range(0, M, BM):
            rm = m0 + ri
            a_out = kl.load(a_ptr + rm[:, None] * stride_am + idx[None, :],
                            mask=(rm[:, None] < M) & (o0 + ro[None, :] < n_out), other=0.0)
            c_out = c_ptr + rm[:, None] * stride_cm + rn[None, :]
            live = (rm[:, None] < M) & (rn[None, :] < N)
            acc = kl.dot(a_out, w_out, kl.load(c_out, mask=live, other=0.0))
            kl.store(c_out, acc, mask=live)


@kdsl.jit
def fp4_pack_panels_kernel(codes_ptr, step_ptr, base_ptr, oidx_ptr, ow_ptr, p_ptr, N, n_groups,
                           n_out, READING: kl.constexpr, G: kl.constexpr, BN: kl.constexpr,
                           BK: kl.constexpr, R: kl.constexpr, ALIGNED: kl.constexpr):
    """The weight dequantised into matmul's fp32 panels (panels_kernel's B):
    P[n // BN, k, n % BN] = W[n, k] for k < n_groups * G, zero rows past N.
    Program j reads its BN rows from the row-tiled layout, BK bytes of a
    group at a time (BK low- and BK high-nibble codes, w = step * v(q) +
    base), and writes them transposed; then adds the outlier channels'
    residuals to their rows of the panel."""
    HALF = G // 2
    pid = kl.program_id(0)
    rn = pid * BN + kl.arange(0, BN)
    rj = kl.arange(0, BK)
    cols = kl.arange(0, BN)
    panel = p_ptr + pid * (n_groups * G * BN)
    block0 = fp4_tile_block(pid * BN, n_groups, BN, R, ALIGNED)
    live = rn < N
    for jb in range(0, n_groups * HALF, BK):
        g = jb // HALF
        k_lo = g * G + jb % HALF
        block = block0 + g * R
        c = kl.load(codes_ptr + block[:, None] * HALF + (jb % HALF + rj)[None, :],
                    mask=live[:, None], other=0)
        s = kl.load(step_ptr + block, mask=live, other=0.0)[:, None]
        o = kl.load(base_ptr + block, mask=live, other=0.0)[:, None]
        lo_ptrs = panel + (k_lo + rj)[:, None] * BN + cols[None, :]
        kl.store(lo_ptrs, kl.trans(fp4_code_value(c & 15, READING) * s + o))
        kl.store(lo_ptrs + HALF * BN, kl.trans(fp4_code_value(c >> 4, READING) * s + o))
    for i in range(0, n_out):
        row = panel + kl.load(oidx_ptr + i) * BN + cols
        kl.store(row, kl.load(row) + kl.load(ow_ptr + rn * n_out + i, mask=live, other=0.0))


# The CPU GEMVs' defaults. Byte lanes: 8 rows per one-work-item program (a
# barrier costs a pass over the work-group on PoCL), one tile of the
# row-tiled layout, so one contiguous stream; with the weights rotated out
# of cache as in a decode step, 8 rows beat 2, 4 and 16 at all four of
# SmolLM2's shapes (e.g. gate/up 3072 x 576 with SwiGLU 0.087 against
# 0.126-0.136 ms, min of 4 x 40 launches; .scratch/gemv_bn_cold.py, PoCL 3.1,
# 2026-12-07). int16 lanes (where the device has pmaddwd): 8-row tiles, as
# many per program as make one program per compute unit on small CPUs (two
# on larger ones), so each core converts x once and then streams one
# contiguous run of the weight. With 96 MB of weights cycled (cold, as in a
# decode step), SmolLM2's gate/up (norm, SwiGLU), down and qkv (norm):
# on the 2-core Zen 4 VM (PoCL 3.1) one program per unit 74.7 / 39.8 / 25.4
# us, two 75.8 / 40.9 / 26.7, 4 tiles per program 113.6 / 53.4 / 36.3; on
# the 16-core Xeon beside the H100 (PoCL 5) one per unit 70.0 / 86.4 / 34.7,
# two 65.9 / 44.3 / 40.5, 4 tiles 65.5 / 43.6 / 40.4
# (.scratch/s14/cold_gemv.py, two runs each). In SmolLM2's decode on the VM:
# 1.01-1.10x llama.cpp, against 0.84-0.99x with one tile per program
# (bench/llm.py --quants m0e4 --peers llama.cpp, alternated three times;
# fourteenth session).
CPU_BYTES_GEMV = {"BN": 8, "BK": 16, "lanes": "bytes", "num_threads": 1}
CPU_INT16_GEMV = {"BN": 8, "lanes": "int16", "num_threads": 1}
SMALL_CPU = 4        # compute units up to which the int16 GEMV runs one program per unit


# parameters one form of the GEMV takes and another not: the CPU's byte lanes
# BK, its int16 lanes runs of tiles and planes; the GPU's float word kernel DEQ,
# its integer one lanes and XBITS (configs.tuned, the tuner's space)
GEMV_FORM_PARAMS = ("BK", "planes", "DEQ", "lanes", "XBITS", "FUSED_X", "BX") + RUNS


def gemv_default(device, K=None):
    """The GEMV's default config, from bench/fp4.py --sweep. On a CPU
    CPU_INT16_GEMV (one program per compute unit, two beyond SMALL_CPU
    units) where the device compiles x86's pmaddwd
    (kdsl.device_features), else CPU_BYTES_GEMV. On a
    GPU the word kernel, 4 rows over 128 work-items, 512 words (4096
    weights) of each row per step for long rows, 128 for short ones (or K
    not given): the H100's best for K = 4096 and 8192, and for K = 576.
    Alone, 8 rows x 128 words with the scale and offset applied per word
    ("factor") ran 4-17 % faster at 4096-16384 rows of 4096-8192
    (.scratch/gemv_gpu_exp.py, 2026-12-07), but as the default it made
    SmolLM2's decode on the H100 slower (283-360 against 398-404 tok/s,
    alternated twice, .scratch/gpu_gemv_engine_ab.py), so it is left to the
    tuner."""
    if device.is_cpu:
        if has_int16_pair_dot(device):
            return dict(CPU_INT16_GEMV, per_cu=1 if device.compute_units <= SMALL_CPU else 2)
        return dict(CPU_BYTES_GEMV)
    return word_gemv_default(K)


def word_gemv_default(K=None):
    """The GPU's float word kernel default (gemv_default's reasons)."""
    long_rows = K is not None and K >= 2048
    return {"BN": 4, "BW": 512 if long_rows else 128, "DEQ": "convert", "num_threads": 128}


def fp4_gemv_config(packed, device):
    """The GEMV's config for this weight on `device`: tuned, else gemv_default."""
    N, K = packed.shape
    return _config("fp4_gemv", {"N": N, "K": K, "G": packed.group_size},
                   gemv_default(device, K), optional=GEMV_FORM_PARAMS)


def gemm_default(device, M=None, N=None, K=None):
    """The GEMM's default config. On a CPU, for M >= 32 and weights of 1M
    elements or more (or M, N, K not given):
    the weight dequantised into fp32 panels (fp4_pack_panels_kernel), then
    kdsl_kernels.matmul's panel GEMM over them (pack_b; the fp32 matmul's
    CPU path, 4 x 16 tiles). PoCL, M = 128, device time with the
    dequantisation, interleaved (.scratch/fp4_gemm_panels_ab.py,
    2026-12-07): 3072 x 576 3.3 against 4.0-6.8 ms for the weight-stationary
    kernel, 4096 x 4096 31.3 against 37.7; 576 x 1536 and 960 x 576 within
    15 % either way, so smaller weights, and M < 32, keep the
    weight-stationary kernel (acc_in_memory, fp4_gemm_acc_kernel): 16
    weight rows per work-item, 16 bytes (32 weights) of each per step
    dequantised once, then all of A in blocks of 4 rows against them, the
    4 x 16 accumulator in C (PoCL,
    2026-11-23: 4 x 16 beat 8 x 8, 2 x 16, 4 x 8, 2 x 32, 8 x 16 and 8- or
    32-byte steps). On a GPU fp4_gemm_kernel with 64 x 64 tiles over 256
    work-items, or 32 x 32 over 64 where there would be fewer 64 x 64 tiles
    than half the compute units (on the H100, M = 128: 32 x 32 won for N =
    576 and 1536, 64 x 64 for N = 4096; 64 x 64 when M and N are not given)."""
    if device.is_cpu:
        packed = (M is None or M >= 32) and (N is None or K is None or N * K >= 1 << 20)
        return {"BM": 4, "BN": 16, "BK": 16, "acc_in_memory": not packed, "pack_b": packed,
                "num_threads": 1}
    if M is not None and kdsl.cdiv(M, 64) * kdsl.cdiv(N, 64) < device.compute_units // 2:
        return {"BM": 32, "BN": 32, "DEQ": "bits", "num_threads": 64}
    return {"BM": 64, "BN": 64, "DEQ": "bits", "num_threads": 256}


def _config(name, key, default, optional=()):
    from . import configs
    return configs.tuned(name, key, default, optional=optional)


def _check_x(x, K):
    if isinstance(x, np.ndarray):
        x = kdsl.tensor(np.ascontiguousarray(x, dtype=np.float32))
    if not isinstance(x, kdsl.Tensor):
        raise TypeError(f"fp4.linear(): x must be a kdsl.Tensor or numpy array, got "
                        f"{type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != K:
        raise ValueError(f"fp4.linear(): x must have shape [M, {K}] to match the weight, "
                         f"got {tuple(x.shape)}")
    if x.dtype != np.float32:
        raise ValueError(f"fp4.linear(): x must be float32, got {x.dtype}")
    if x.shape[0] > 0 and x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError("fp4.linear(): x must have stride 1 along K (a row-major view)")
    return x


def fp4_linear(x, packed, *, bias=None, out=None, config=None, activation=None, rms_norm=None,
               accumulate=False):
    """x @ W.T for a PackedWeight W; see kdsl_kernels.fp4.linear."""
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"fp4.linear(): packed must be a PackedWeight (from fp4.quantize), "
                        f"got {type(packed).__name__}")
    if activation not in (None, "swiglu"):
        raise ValueError(f"fp4.linear(): unknown activation {activation!r}; None or 'swiglu'")
    N, K = packed.shape
    if activation == "swiglu" and N % 2:
        raise ValueError(f"fp4.linear(): activation='swiglu' needs the gate rows then the up "
                         f"rows, an even row count; the weight has {N}")
    F = N // 2 if activation else N
    x = _check_x(x, K)
    M = x.shape[0]
    if out is None:
        if accumulate:
            raise ValueError("fp4.linear(): accumulate=True adds into `out`, so out is needed")
        out = kdsl.empty((M, F), np.float32, device=x.device)
    elif tuple(out.shape) != (M, F) or out.dtype != np.float32:
        raise ValueError(f"fp4.linear(): out must be float32 ({M}, {F}), got {out.dtype} "
                         f"{tuple(out.shape)}")
    elif M > 0 and F > 1 and out.stride(1) != 1:
        raise ValueError("fp4.linear(): out must have stride 1 along N")
    bias = _vector(bias, N, "bias", x.device)
    norm = None
    if rms_norm is not None:
        if not (isinstance(rms_norm, tuple) and len(rms_norm) == 2):
            raise ValueError("fp4.linear(): rms_norm must be a (weight, eps) pair")
        norm = (_vector(rms_norm[0], K, "rms_norm weight", x.device), float(rms_norm[1]))
    if M == 0 or N == 0:
        return out
    if M == 1 and K > 0:
        launch_fp4(x, packed, out, bias, config, gated=activation == "swiglu", norm=norm,
                   accumulate=accumulate)
        return out
    # the GEMM path: the norm, the projection, the activation and the residual
    # add are each their own kernel (the fused forms are for decode)
    if norm is not None and K > 0:
        x = rms_norm_rows(x, norm[0], norm[1])
    direct = not activation and not accumulate
    full = out if direct else kdsl.empty((M, N), np.float32, device=x.device)
    if K == 0:
        full.copy_from(np.zeros((M, N), np.float32) + (bias.numpy() if bias is not None else 0))
    else:
        launch_fp4(x, packed, full, bias, config)
    if direct:
        return out
    result = swiglu(full[:, :F], full[:, F:]) if activation else full
    if accumulate:
        return add(out, result, out=out)
    return copy(result, out=out)


def _vector(v, n, name, device):
    """A float32 [n] device tensor from v (a tensor or numpy array), or None."""
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        v = kdsl.tensor(np.ascontiguousarray(v, dtype=np.float32), device=device)
    if not isinstance(v, kdsl.Tensor) or tuple(v.shape) != (n,) or v.dtype != np.float32:
        raise ValueError(f"fp4.linear(): {name} must be float32 ({n},), got "
                         f"{getattr(v, 'dtype', type(v).__name__)} "
                         f"{tuple(getattr(v, 'shape', ()))}")
    if n > 1 and v.stride(0) != 1:
        raise ValueError(f"fp4.linear(): {name} must be contiguous")
    return v


def _byte_chunk(group_size, bk):
    """The byte-lane GEMV's bytes per step: bk where it divides a group's
    G/2 bytes, else the whole group."""
    half = group_size // 2
    return bk if bk <= half and half % bk == 0 else half


def _tile_aligned(bn, row_shift=0):
    """fp4_tile_block's ALIGNED for programs of bn rows starting at multiples
    of bn (plus row_shift, the up half of a gated weight)."""
    if ROW_TILE % bn == 0:          # a program's rows sit in one tile
        return row_shift % bn == 0
    if bn % ROW_TILE == 0:          # a program's rows are whole tiles
        return row_shift % ROW_TILE == 0
    return False


def launch_fp4(x, packed, out, bias=None, config=None, gated=False, norm=None, accumulate=False):
    """Enqueue the GEMV (M == 1) or GEMM for checked arguments; returns the
    kernel's event (None in the interpreter). fp4_linear() is the public
    form; benchmarks call this for the device time. GEMV only: gated, out
    gets silu(gate) * up of the weight's two row halves; norm = (weight,
    eps), x is RMS-normalised on the way in; accumulate, out += the result."""
    M, (N, K) = x.shape[0], packed.shape
    F = N // 2 if gated else N
    arrays = packed.device_arrays(x.device)
    common = dict(READING=packed.reading, G=packed.group_size, HAS_BIAS=bias is not None)
    # out, bias, outliers: what every kernel takes after its weight arrays
    tail = (out, bias if bias is not None else out, arrays["outlier_idx"], arrays["outlier_w"])
    n_out = len(packed.outlier_idx)
    if M != 1 and (gated or norm is not None or accumulate):
        raise ValueError("launch_fp4: gated, norm and accumulate are GEMV (M = 1) forms")
    norm_w, eps = norm if norm is not None else (x, 0.0)
    fused = dict(NORM=norm is not None, ACCUMULATE=accumulate, GATED=gated)
    if M == 1:
        cfg = config or fp4_gemv_config(packed, x.device)
        lanes = cfg.get("lanes")
        if lanes in ("bytes", "int16"):
            if not x.device.is_cpu:
                raise ValueError(f"fp4.linear(): the CPU GEMV (config lanes={lanes!r}) "
                                 f"runs on CPU devices only, and {x.device} is not one; pass a "
                                 f"config with BN, BW, DEQ, num_threads, or config=None")
            even = F % cfg["BN"] == 0 and K % packed.group_size == 0
            if lanes == "int16" and packed.reading != "e0m4":
                cfg = CPU_BYTES_GEMV        # the power-of-two grid is not affine in q
            elif lanes == "int16":
                return _launch_int16(x, norm_w, packed, arrays, tail, F, eps, cfg, fused,
                                     has_bias=bias is not None)
            return fp4_gemv_bytes_kernel[(kdsl.cdiv(F, cfg["BN"]),)](
                x, norm_w, arrays["tiled_codes"], arrays["tiled_step"], arrays["tiled_base"],
                *tail, N, K, packed.n_groups, n_out, F, eps, **common, **fused, EVEN=even,
                BN=cfg["BN"], BK=_byte_chunk(packed.group_size, cfg.get("BK", 16)),
                R=ROW_TILE, ALIGNED=_tile_aligned(cfg["BN"], F if gated else 0),
                num_threads=cfg["num_threads"])
        if lanes == "idot" and packed.reading == "e0m4":
            # the power-of-two grid is not affine in q: it takes the float GEMV below
            return launch_idot(x, norm_w, packed, arrays, tail, F, eps, cfg, fused,
                               has_bias=bias is not None)
        # the words of a step must not straddle groups: at least G/8 of them
        words = max(cfg["BW"], packed.group_size // 8)
        even = (F % cfg["BN"] == 0 and K % packed.group_size == 0
                and packed.codes.shape[1] // 4 % words == 0)
        return fp4_gemv_kernel[(kdsl.cdiv(F, cfg["BN"]),)](
            x, norm_w, arrays["words"], arrays["scales"], arrays["offsets"], *tail, N, K,
            packed.n_groups, n_out, F, eps, **common, **fused, DEQ=cfg.get("DEQ", "convert"), EVEN=even,
            BN=cfg["BN"], BW=words, num_threads=cfg["num_threads"])
    cfg = config or _config("fp4_gemm", {"M": M, "N": N, "K": K, "G": packed.group_size},
                            gemm_default(x.device, M, N, K))
    if cfg.get("pack_b"):
        return _launch_panels(x, packed, out, bias, cfg, arrays)
    if cfg.get("acc_in_memory"):
        # the weight-stationary kernel (CPUs): BK bytes of one group per step, at most G/2
        bk = min(cfg["BK"], packed.group_size // 2)
        programs = kdsl.cdiv(N, cfg["BN"])
        # the dequantised tiles; 4 MiB at first (N up to 32768 at BK = 16)
        tiles = scratch("fp4_gemm_tiles", x.device, programs * 2 * bk * cfg["BN"])
        even = N % cfg["BN"] == 0 and K % packed.group_size == 0
        return fp4_gemm_acc_kernel[(programs,)](
            x, arrays["tiled_codes"], arrays["tiled_step"], arrays["tiled_base"], *tail, tiles,
            M, N, K, packed.n_groups, n_out, x.stride(0), out.stride(0), **common, EVEN=even,
            BM=cfg["BM"], BN=cfg["BN"], BK=bk, BO=16, R=ROW_TILE,
            ALIGNED=_tile_aligned(cfg["BN"]),
            num_threads=cfg["num_threads"])
    even = M % cfg["BM"] == 0 and N % cfg["BN"] == 0 and K % packed.group_size == 0
    grid = (kdsl.cdiv(M, cfg["BM"]), kdsl.cdiv(N, cfg["BN"]))
    return fp4_gemm_kernel[grid](
        x, arrays["codes"], arrays["scales"], arrays["offsets"], *tail, M, N, K, packed.n_groups,
        n_out, x.stride(0), out.stride(0), **common, DEQ=cfg["DEQ"], EVEN=even, BM=cfg["BM"],
        BN=cfg["BN"], BO=16, num_threads=cfg["num_threads"])


def _launch_int16(x, norm_w, packed, arrays, tail, F, eps, cfg, fused, has_bias):
    """fp4_gemv_int16_kernel over T tiles of BN rows per program, each
    program's int16 x' in its own slot of a scratch buffer."""
    (N, K), G, n_groups = packed.shape, packed.group_size, packed.n_groups
    BN, tiles = cfg["BN"], kdsl.cdiv(F, cfg["BN"])
    T = blocks_per_program(cfg, tiles, x.device)
    programs = kdsl.cdiv(tiles, T)
    xq = scratch("fp4_gemv_int16_x", x.device, programs * n_groups * G, dtype=np.int16)
    xs = scratch("fp4_gemv_int16_scales", x.device, programs * 2 * n_groups)
    even = F % (BN * T) == 0 and K % G == 0
    # the codes as nibble planes for groups of 64+; at G = 32 the planes ran no
    # faster than bytes (PoCL, warm: 4096 x 4096 0.36 against 0.32 ms, 576 x 1536
    # 0.038 against 0.034; .scratch/s15/fp4g_cfg.py)
    planes = cfg.get("planes", True) and G % 64 == 0
    return fp4_gemv_int16_kernel[(programs,)](
        x, norm_w, arrays["tiled_words16" if planes else "tiled_codes"], arrays["tiled_step"],
        arrays["tiled_base"], *tail, xq, xs, N, K, n_groups, len(packed.outlier_idx), F, eps,
        G=G, HAS_BIAS=has_bias, **fused, EVEN=even, BN=BN, T=T, R=ROW_TILE,
        ALIGNED=_tile_aligned(BN, F if fused["GATED"] else 0), PLANES=planes,
        num_threads=cfg["num_threads"])


def _launch_panels(x, packed, out, bias, cfg, arrays):
    """The pack_b GEMM: the weight into fp32 panels of BN rows (a scratch
    buffer of N x Kp floats, Kp = K rounded up to the group), then
    kdsl_kernels.matmul's panel GEMM; returns the GEMM's event."""
    M, (N, K) = x.shape[0], packed.shape
    G = packed.group_size
    BN, BK = cfg["BN"], min(cfg["BK"], G)
    programs = kdsl.cdiv(N, BN)
    Kp = packed.n_groups * G
    panels = scratch("matmul_panels", x.device, programs * BN * Kp)
    fp4_pack_panels_kernel[(programs,)](
        arrays["tiled_codes"], arrays["tiled_step"], arrays["tiled_base"],
        arrays["outlier_idx"], arrays["outlier_w"], panels, N, packed.n_groups,
        len(packed.outlier_idx), READING=packed.reading, G=G, BN=BN, BK=min(BK, G // 2),
        R=ROW_TILE, ALIGNED=_tile_aligned(BN), num_threads=1)
    even = M % cfg["BM"] == 0 and N % BN == 0 and K % BK == 0
    return panels_kernel[(kdsl.cdiv(M, cfg["BM"]), programs, 1)](
        x, panels, out, bias if bias is not None else out, M, N, K, Kp, x.stride(0), 1,
        out.stride(0), 0, 0, 0, HAS_BIAS=bias is not None, EVEN=even, BM=cfg["BM"], BN=BN,
        BK=BK, num_threads=cfg["num_threads"])
