"""x as int16 per group, for integer dots against quantised weights (CPUs).

A GEMV over 4- or 8-bit weight codes can take its products as integers:
x is scaled per group of G to int16 once (x ~ d * xq), each row's group is
an integer kl.dot of its codes against xq (x86's pmaddwd on PoCL, 16
products per instruction), and the group's float factor is applied once
to that sum. The FP4 and int8 GEMVs convert x with this function into a
scratch slot of their own per program, then read it back for every row.
"""
import kdsl
import kdsl.language as kl


@kdsl.jit
def nibble_planes_x_order(k, G: kl.constexpr):
    """Where element k of a group goes when x is laid out for FP4 codes read as
    16-bit words. A group's G/2 code bytes are G/4 little-endian words; byte j
    holds element j in its low nibble and j + G/2 in its high one, so bits
    4p..4p+3 of word i (nibble plane p) hold element 2i + p // 2 + (p % 2) * G/2.
    Plane p of the x order is the G/4 elements that plane multiplies."""
    half = k // (G // 2)
    byte = k % (G // 2)
    return (half + 2 * (byte % 2)) * (G // 4) + byte // 2


@kdsl.jit
def int16_x_groups(x_ptr, norm_ptr, xq_ptr, xs_ptr, K, n_groups, G: kl.constexpr,
                   EVEN: kl.constexpr, NORM: kl.constexpr, PLANES: kl.constexpr):
    """Each group's x' (x, times the norm weight with NORM) as int16 into
    xq_ptr, x' ~ d * xq with d = max|x'| / 32767 (truncated toward zero:
    each x' moves by less than d, far below the 4- or 8-bit weights' own
    rounding),
    and (d, sum(x')) per group into xs_ptr; returns the squares of x
    (lane-wise) for NORM's 1/rms. PLANES: a group's xq in the order of the
    FP4 codes' nibble planes (nibble_planes_x_order), else in element order."""
    rk = kl.arange(0, G)
    squares = kl.zeros((G,), dtype=kl.float32)
    for g in range(0, n_groups):
        k = g * G + rk
        if EVEN:
            x = kl.load(x_ptr + k)
        else:
            x = kl.load(x_ptr + k, mask=k < K, other=0.0)
        squares += x * x
        if NORM:
            if EVEN:
                x = x * kl.load(norm_ptr + k)
            else:
                x = x * kl.load(norm_ptr + k, mask=k < K, other=0.0)
        # max |x| on the bit patterns: integer max needs none of fmax's NaN
        # handling (a compare and a blend per step on AVX2)
        amax = kl.max(x.to(kl.int32, bitcast=True) & 0x7FFFFFFF, axis=0).to(kl.float32,
                                                                          bitcast=True)
        xq = (x * (32767.0 / kl.maximum(amax, 1e-30))).to(kl.int16)
        if PLANES:
            kl.store(xq_ptr + g * G + nibble_planes_x_order(rk, G), xq)
        else:
            kl.store(xq_ptr + k, xq)
        kl.store(xs_ptr + 2 * g, amax * (1.0 / 32767.0))
        kl.store(xs_ptr + 2 * g + 1, kl.sum(x, axis=0))
    return squares
