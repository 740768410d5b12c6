"""Triton's tutorial kernels written in kdsl, checked against numpy.

Every kernel runs on the OpenCL device and on the interpreter (the `interpret`
parameter). Hypothesis varies the runtime sizes freely (1, primes,
non-multiples of the block, up to 100k, and 0 where an empty launch makes
sense); block sizes and dtypes come from a few values only, since each
distinct constexpr or argument dtype compiles a kernel.

fp16 is a storage type: a load from fp16 memory gives float32 and a store to
it rounds, so fp16 results are compared with a relative tolerance of ~1e-3.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl
import kdsl.language as kl

PRIMES = [2, 3, 5, 7, 13, 31, 127, 257, 1021, 4099]
SEEDS = st.integers(0, 2**32 - 1)


both_backends = pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])


def launch(kernel, interpret, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs) on the device or in the interpreter."""
    kernel._interpret = interpret
    try:
        kernel[grid](*args, **kwargs)
    finally:
        kernel._interpret = None


def next_pow2(n):
    return 1 << max(n - 1, 0).bit_length()


def tolerances(dtype):
    return {"rtol": 1e-3, "atol": 1e-3} if dtype == np.float16 else {"rtol": 1e-5, "atol": 1e-6}


# ---------------------------------------------------------------- vector add
@kdsl.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: kl.constexpr):
    pid = kl.program_id(0)
    offs = pid * BLOCK + kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask)
    y = kl.load(y_ptr + offs, mask=mask)
    kl.store(out_ptr + offs, x + y, mask=mask)


def add(x, y, interpret, block):
    """Triton's host wrapper: the grid is a function of the launch's meta-parameters."""
    out = kdsl.empty(x.shape, dtype=x.dtype)
    n = x.shape[0]
    launch(add_kernel, interpret, lambda meta: (kdsl.cdiv(n, meta["BLOCK"]),),
           x, y, out, n, BLOCK=block)
    return out.numpy()


vector_sizes = st.one_of(st.sampled_from([0, 1] + PRIMES + [64, 1000, 1024, 1025, 99_991,
                                                            100_000]),
                         st.integers(0, 100_000))


@both_backends
@settings(max_examples=12, deadline=None)
@given(n=vector_sizes, block=st.sampled_from([128, 1024]),
       dtype=st.sampled_from([np.float32, np.float16]), seed=SEEDS)
def test_vector_add(interpret, n, block, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(dtype)
    y = rng.standard_normal(n).astype(dtype)
    out = add(kdsl.tensor(x), kdsl.tensor(y), interpret, block)
    expected = (x.astype(np.float32) + y.astype(np.float32)).astype(dtype)
    assert out.dtype == dtype and out.shape == (n,)
    np.testing.assert_allclose(out.astype(np.float32), expected.astype(np.float32),
                               **tolerances(dtype))


@both_backends
def test_vector_add_leaves_memory_past_n_alone(interpret):
    """The mask keeps the last program's extra lanes from writing."""
    n = 1000
    x = np.arange(1100, dtype=np.float32)
    out = np.full(1100, -7.0, np.float32)
    launch(add_kernel, interpret, (kdsl.cdiv(n, 256),), x, x, out, n, BLOCK=256)
    np.testing.assert_array_equal(out[:n], 2 * x[:n])
    np.testing.assert_array_equal(out[n:], -7.0)


@both_backends
def test_vector_add_empty_grid_launches_nothing(interpret):
    out = np.full(8, 3.0, np.float32)
    launch(add_kernel, interpret, (0,), out, out, out, 8, BLOCK=128)
    np.testing.assert_array_equal(out, 3.0)


@both_backends
def test_vector_add_mixed_storage(interpret):
    """fp16 and fp32 operands: both load as float32; the fp32 store does not round."""
    rng = np.random.default_rng(1)
    n = 3001
    x = rng.standard_normal(n).astype(np.float16)
    y = (rng.standard_normal(n) * 1e-4).astype(np.float32)
    out = np.zeros(n, np.float32)
    launch(add_kernel, interpret, (kdsl.cdiv(n, 1024),), x, y, out, n, BLOCK=1024)
    np.testing.assert_allclose(out, x.astype(np.float32) + y, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------- fused softmax
@kdsl.jit
def softmax_kernel(out_ptr, in_ptr, in_row_stride, out_row_stride, n_cols, BLOCK: kl.constexpr):
    """One row per program; the row fits one block."""
    row = kl.program_id(0)
    row_start = in_ptr + row * in_row_stride
    offs = kl.arange(0, BLOCK)
    mask = offs < n_cols
    x = kl.load(row_start + offs, mask=mask, other=-float("inf"))
    x_minus_max = x - kl.max(x, axis=0)
    numerator = kl.exp(x_minus_max)
    denominator = kl.sum(numerator, axis=0)
    kl.store(out_ptr + row * out_row_stride + offs, numerator / denominator, mask=mask)


@kdsl.jit
def softmax_rows_kernel(out_ptr, in_ptr, n_rows, n_cols, in_row_stride,
                        ROWS: kl.constexpr, BLOCK: kl.constexpr):
    """ROWS rows per program, as one [ROWS, BLOCK] block."""
    rows = kl.program_id(0) * ROWS + kl.arange(0, ROWS)
    cols = kl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    x = kl.load(in_ptr + rows[:, None] * in_row_stride + cols[None, :], mask=mask,
                other=-float("inf"))
    x = x - kl.max(x, axis=1)[:, None]
    numerator = kl.exp(x)
    denominator = kl.sum(numerator, axis=1, keep_dims=True)
    kl.store(out_ptr + rows[:, None] * n_cols + cols[None, :], numerator / denominator,
             mask=mask)


def softmax_reference(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@both_backends
@settings(max_examples=10, deadline=None)
@given(n_rows=st.sampled_from([1, 2, 3, 7, 64]),
       n_cols=st.sampled_from([1] + PRIMES[:8] + [16, 1024]),
       pad=st.sampled_from([0, 3]), dtype=st.sampled_from([np.float32, np.float16]), seed=SEEDS)
def test_softmax(interpret, n_rows, n_cols, pad, dtype, seed):
    rng = np.random.default_rng(seed)
    # rows of a wider matrix: the input row stride is n_cols + pad
    wide = (rng.standard_normal((n_rows, n_cols + pad)) * 4).astype(dtype)
    out = kdsl.empty((n_rows, n_cols), dtype=dtype)
    launch(softmax_kernel, interpret, (n_rows,), out, kdsl.tensor(wide), n_cols + pad, n_cols,
           n_cols, BLOCK=max(next_pow2(n_cols), 16))
    expected = softmax_reference(wide[:, :n_cols].astype(np.float32))
    np.testing.assert_allclose(out.numpy().astype(np.float64), expected, **tolerances(dtype))


@both_backends
@settings(max_examples=10, deadline=None)
@given(n_rows=st.one_of(st.sampled_from([0, 1] + PRIMES[:6]), st.integers(0, 300)),
       n_cols=st.one_of(st.sampled_from([1, 5, 31, 64]), st.integers(1, 64)),
       rows_per_program=st.sampled_from([2, 8]),
       dtype=st.sampled_from([np.float32, np.float16]), seed=SEEDS)
def test_softmax_several_rows_per_program(interpret, n_rows, n_cols, rows_per_program, dtype,
                                          seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n_rows, n_cols)) * 4).astype(dtype)
    out = np.full((n_rows, n_cols), np.nan, dtype)
    launch(softmax_rows_kernel, interpret, (kdsl.cdiv(n_rows, rows_per_program),), out, x,
           n_rows, n_cols, n_cols, ROWS=rows_per_program, BLOCK=64)
    np.testing.assert_allclose(out.astype(np.float64), softmax_reference(x.astype(np.float32)),
                               **tolerances(dtype))


@both_backends
def test_softmax_extreme_values(interpret):
    """Subtracting the row max keeps exp from overflowing; -inf entries give 0."""
    x = np.array([[1000.0, 999.0, -1000.0, -np.inf, 0.0],
                  [-50.0, -50.0, -50.0, -50.0, -50.0]], np.float32)
    out = np.zeros_like(x)
    launch(softmax_kernel, interpret, (2,), out, x, 5, 5, 5, BLOCK=8)
    expected = softmax_reference(x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    assert out[0, 3] == 0.0


# --------------------------------------------------------- layer norm forward
@kdsl.jit
def layer_norm_fwd_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, stride, n_cols, eps,
                          BLOCK: kl.constexpr):
    """Triton's tutorial: one row per program, in BLOCK-wide chunks with running sums."""
    row = kl.program_id(0)
    y_ptr += row * stride
    x_ptr += row * stride
    _mean = kl.zeros((BLOCK,), dtype=kl.float32)
    for off in range(0, n_cols, BLOCK):
        cols = off + kl.arange(0, BLOCK)
        a = kl.load(x_ptr + cols, mask=cols < n_cols, other=0.).to(kl.float32)
        _mean += a
    mean = kl.sum(_mean, axis=0) / n_cols
    _var = kl.zeros((BLOCK,), dtype=kl.float32)
    for off in range(0, n_cols, BLOCK):
        cols = off + kl.arange(0, BLOCK)
        x = kl.load(x_ptr + cols, mask=cols < n_cols, other=0.).to(kl.float32)
        x = kl.where(cols < n_cols, x - mean, 0.)
        _var += x * x
    var = kl.sum(_var, axis=0) / n_cols
    rstd = 1 / kl.sqrt(var + eps)
    kl.store(mean_ptr + row, mean)
    kl.store(rstd_ptr + row, rstd)
    for off in range(0, n_cols, BLOCK):
        cols = off + kl.arange(0, BLOCK)
        mask = cols < n_cols
        w = kl.load(w_ptr + cols, mask=mask)
        b = kl.load(b_ptr + cols, mask=mask)
        x = kl.load(x_ptr + cols, mask=mask, other=0.).to(kl.float32)
        x_hat = (x - mean) * rstd
        y = x_hat * w + b
        kl.store(y_ptr + cols, y, mask=mask)


@both_backends
@settings(max_examples=10, deadline=None)
@given(n_rows=st.sampled_from([1, 3, 17]),
       n_cols=st.one_of(st.sampled_from([1] + PRIMES[:9] + [64, 256, 1000]),
                        st.integers(1, 1500)),
       block=st.sampled_from([64, 256]), dtype=st.sampled_from([np.float32, np.float16]),
       seed=SEEDS)
def test_layer_norm_forward(interpret, n_rows, n_cols, block, dtype, seed):
    rng = np.random.default_rng(seed)
    eps = 1e-5
    x = (rng.standard_normal((n_rows, n_cols)) * 2 + 0.5).astype(dtype)
    w = rng.standard_normal(n_cols).astype(np.float32)
    b = rng.standard_normal(n_cols).astype(np.float32)
    y = kdsl.empty((n_rows, n_cols), dtype=dtype)
    mean = kdsl.empty((n_rows,), dtype=np.float32)
    rstd = kdsl.empty((n_rows,), dtype=np.float32)
    launch(layer_norm_fwd_kernel, interpret, (n_rows,), kdsl.tensor(x), y, kdsl.tensor(w),
           kdsl.tensor(b), mean, rstd, n_cols, n_cols, eps, BLOCK=block)
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=1)
    inv = 1 / np.sqrt(x64.var(axis=1) + eps)
    expected = (x64 - mu[:, None]) * inv[:, None] * w + b
    np.testing.assert_allclose(mean.numpy(), mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rstd.numpy(), inv, rtol=1e-4, atol=1e-5)
    tol = {"rtol": 2e-3, "atol": 2e-3} if dtype == np.float16 else {"rtol": 1e-4, "atol": 1e-4}
    np.testing.assert_allclose(y.numpy().astype(np.float64), expected, **tol)


@both_backends
def test_layer_norm_constant_row(interpret):
    """A constant row has variance 0: y = b exactly (x_hat = 0), rstd = 1/sqrt(eps)."""
    n = 300
    x = np.full((2, n), 3.25, np.float32)
    w = np.linspace(-1, 1, n).astype(np.float32)
    b = np.linspace(5, 6, n).astype(np.float32)
    y = np.zeros_like(x)
    mean = np.zeros(2, np.float32)
    rstd = np.zeros(2, np.float32)
    launch(layer_norm_fwd_kernel, interpret, (2,), x, y, w, b, mean, rstd, n, n, 1e-2, BLOCK=128)
    np.testing.assert_allclose(mean, 3.25, rtol=1e-6)
    np.testing.assert_allclose(rstd, 10.0, rtol=1e-5)
    np.testing.assert_allclose(y, np.broadcast_to(b, (2, n)), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------ matmul (tutorial 03)
@kdsl.jit
def leaky_relu(x):
    return kl.where(x >= 0, x, 0.01 * x)


@kdsl.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_bk, stride_cm,
                  BLOCK_M: kl.constexpr, BLOCK_N: kl.constexpr, BLOCK_K: kl.constexpr,
                  GROUP_M: kl.constexpr, ACTIVATION: kl.constexpr):
    """C = A @ B with programs grouped along M for reuse, and a fused activation."""
    pid = kl.program_id(0)
    num_pid_m = kl.cdiv(M, BLOCK_M)
    num_pid_n = kl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = kl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m
    offs_m = pid_m * BLOCK_M + kl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + kl.arange(0, BLOCK_N)
    offs_k = kl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :]
    acc = kl.zeros((BLOCK_M, BLOCK_N), dtype=kl.float32)
    for k in range(0, kl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = kl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        b = kl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
        acc = kl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk
    if ACTIVATION == "leaky_relu":
        acc = leaky_relu(acc)
    c_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    kl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], acc, mask=c_mask)


MATMUL_SHAPES = [(1, 1, 1), (7, 13, 16), (32, 45, 33), (70, 13, 100), (65, 17, 48)]


@both_backends
@pytest.mark.parametrize("activation", ["", "leaky_relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_matmul(interpret, activation, dtype):
    rng = np.random.default_rng(2)
    for m, n, k in MATMUL_SHAPES:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        c = np.zeros((m, n), np.float32)
        bm, bn, bk = 32, 16, 16
        grid = (kdsl.cdiv(m, bm) * kdsl.cdiv(n, bn),)
        launch(matmul_kernel, interpret, grid, a, b, c, m, n, k, k, n, n,
               BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=2, ACTIVATION=activation)
        expected = a.astype(np.float64) @ b.astype(np.float64)
        if activation:
            expected = np.where(expected >= 0, expected, 0.01 * expected)
        np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-4 * np.sqrt(k),
                                   err_msg=f"M, N, K = {m}, {n}, {k}")
