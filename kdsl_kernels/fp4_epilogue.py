"""What every FP4 GEMV does after its dot products: outlier channels, RMSNorm's
factor, bias, and the store (or residual add)."""
import kdsl
import kdsl.language as kl


@kdsl.jit
def fp4_rows_epilogue(y, x_ptr, norm_ptr, squares, eps, bias_ptr, oidx_ptr, ow_ptr, rn, N, K,
                      n_out, HAS_BIAS: kl.constexpr, NORM: kl.constexpr):
    """y plus the outlier channels (fp16 residual columns beside the FP4 body),
    then with NORM the RMS normalisation's 1/rms(x) (a common factor of the
    row, so applied once to the sum: rms_norm(x) W^T = (x * w) W^T / rms(x)),
    then the bias."""
    for i in range(0, n_out):
        col = kl.load(oidx_ptr + i)
        xi = kl.load(x_ptr + col)
        if NORM:
            xi = xi * kl.load(norm_ptr + col)
        y += kl.load(ow_ptr + rn * n_out + i, mask=rn < N, other=0.0) * xi
    if NORM:
        # reduced here, under NORM: on a GPU the sum across work-items costs barriers
        y = y * kl.rsqrt(kl.sum(squares, axis=0) / K + eps)
    if HAS_BIAS:
        y += kl.load(bias_ptr + rn, mask=rn < N, other=0.0)
    return y


@kdsl.jit
def fp4_store_rows(y_ptr, y, rn, F, EVEN: kl.constexpr, ACCUMULATE: kl.constexpr):
    """y_ptr[rn] = y (+= y with ACCUMULATE, a residual add) for the rows below F
    (all of them when EVEN)."""
    if EVEN:
        if ACCUMULATE:
            y += kl.load(y_ptr + rn)
        kl.store(y_ptr + rn, y)
    else:
        if ACCUMULATE:
            y += kl.load(y_ptr + rn, mask=rn < F, other=0.0)
        kl.store(y_ptr + rn, y, mask=rn < F)
