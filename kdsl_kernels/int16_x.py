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
def int16_x_groups(x_ptr, norm_ptr, xq_ptr, xs_ptr, K, n_groups, G: kl.constexpr,
                   EVEN: kl.constexpr, NORM: kl.constexpr):
    """Each group's x' (x, times the norm weight with NORM) as int16 into
    xq_ptr, x' ~ d * xq with d = max|x'| / 32767 (truncated toward zero:
    each x' moves by less than d, far below the 4- or 8-bit weights' own
    rounding),
    and (d, sum(x')) per group into xs_ptr; returns the squares of x
    (lane-wise) for NORM's 1/rms."""
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
        kl.store(xq_ptr + k, (x * (32767.0 / kl.maximum(amax, 1e-30))).to(kl.int16))
        kl.store(xs_ptr + 2 * g, amax * (1.0 / 32767.0))
        kl.store(xs_ptr + 2 * g + 1, kl.sum(x, axis=0))
    return squares
