"""The numpy interpreter: kernels run with `interpret=True`, compared against numpy.

These kernels are also the reference the OpenCL back end is tested against,
so each one exercises a piece of the language's semantics on purpose.
"""
import inspect
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kdsl
import kdsl.language as kl
from kdsl import interpreter

SCALE = 3               # a module-level constant read by kernels
PRIMES = [1, 2, 3, 5, 7, 13, 31, 127, 257, 1021]
sizes = st.one_of(st.sampled_from(PRIMES + [0, 64, 256, 1000]), st.integers(0, 3000))


def next_pow2(n):
    return 1 << max(n - 1, 0).bit_length()


def line_of(fn, marker):
    """The file line of the first line of `fn`'s source that contains `marker`."""
    lines, start = inspect.getsourcelines(fn.fn)
    return start + next(i for i, text in enumerate(lines) if marker in text)


# ------------------------------------------------------------------ kernels
@kdsl.jit(interpret=True)
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: kl.constexpr):
    pid = kl.program_id(0)
    offs = pid * BLOCK + kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask, other=0.0)
    y = kl.load(y_ptr + offs, mask=mask, other=0.0)
    kl.store(out_ptr + offs, x + y, mask=mask)


@kdsl.jit(interpret=True)
def softmax_kernel(out_ptr, in_ptr, in_stride, out_stride, n_cols, BLOCK: kl.constexpr):
    """One row per program; the row fits one block."""
    row = kl.program_id(0)
    offs = kl.arange(0, BLOCK)
    mask = offs < n_cols
    x = kl.load(in_ptr + row * in_stride + offs, mask=mask, other=float("-inf"))
    x = x - kl.max(x, axis=0)
    numerator = kl.exp(x)
    denominator = kl.sum(numerator, axis=0)
    kl.store(out_ptr + row * out_stride + offs, numerator / denominator, mask=mask)


@kdsl.jit(interpret=True)
def layer_norm_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, stride, n_cols, eps,
                      BLOCK: kl.constexpr):
    """Triton's tutorial layer norm: a row per program, in BLOCK-wide chunks."""
    row = kl.program_id(0)
    x_ptr += row * stride
    y_ptr += row * stride
    total = kl.zeros((BLOCK,), kl.float32)
    for off in range(0, n_cols, BLOCK):
        cols = off + kl.arange(0, BLOCK)
        total += kl.load(x_ptr + cols, mask=cols < n_cols, other=0.0)
    mean = kl.sum(total, axis=0) / n_cols
    squares = kl.zeros((BLOCK,), kl.float32)
    for off in range(0, n_cols, BLOCK):
        cols = off + kl.arange(0, BLOCK)
        x = kl.load(x_ptr + cols, mask=cols < n_cols, other=0.0)
        x = kl.where(cols < n_cols, x - mean, 0.0)
        squares += x * x
    rstd = 1 / kl.sqrt(kl.sum(squares, axis=0) / n_cols + eps)
    kl.store(mean_ptr + row, mean)
    kl.store(rstd_ptr + row, rstd)
    for off in range(0, n_cols, BLOCK):
        cols = off + kl.arange(0, BLOCK)
        mask = cols < n_cols
        w = kl.load(w_ptr + cols, mask=mask)
        b = kl.load(b_ptr + cols, mask=mask)
        x = kl.load(x_ptr + cols, mask=mask, other=0.0)
        kl.store(y_ptr + cols, (x - mean) * rstd * w + b, mask=mask)


@kdsl.jit(interpret=True)
def outer_kernel(x_ptr, y_ptr, out_ptr, M, N, BM: kl.constexpr, BN: kl.constexpr):
    """out[i, j] = x[i] * SCALE + y[j], over 2-D tiles of a 2-D grid."""
    rows = kl.program_id(0) * BM + kl.arange(0, BM)
    cols = kl.program_id(1) * BN + kl.arange(0, BN)
    x = kl.load(x_ptr + rows, mask=rows < M)
    y = kl.load(y_ptr + cols, mask=cols < N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    kl.store(out_ptr + rows[:, None] * N + cols[None, :], x[:, None] * SCALE + y[None, :],
             mask=mask)


@kdsl.jit(interpret=True)
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                  BM: kl.constexpr, BN: kl.constexpr, BK: kl.constexpr):
    rm = kl.program_id(0) * BM + kl.arange(0, BM)
    rn = kl.program_id(1) * BN + kl.arange(0, BN)
    acc = kl.zeros((BM, BN), kl.float32)
    for k in range(0, K, BK):
        rk = kl.multiple_of(k, BK) + kl.arange(0, BK)
        a = kl.load(a_ptr + rm[:, None] * K + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        b = kl.load(b_ptr + rk[:, None] * N + rn[None, :],
                    mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = kl.dot(a, b, acc)
    kl.store(c_ptr + rm[:, None] * N + rn[None, :], acc,
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@kdsl.jit(interpret=True)
def reductions_kernel(x_ptr, row_sum_ptr, col_max_ptr, row_argmax_ptr, col_argmin_ptr,
                      total_ptr, R: kl.constexpr, C: kl.constexpr):
    rows = kl.arange(0, R)
    cols = kl.arange(0, C)
    x = kl.load(x_ptr + rows[:, None] * C + cols[None, :])
    kl.store(row_sum_ptr + rows, kl.sum(x, axis=1))
    kl.store(col_max_ptr + cols[None, :], kl.max(x, axis=0, keep_dims=True))
    kl.store(row_argmax_ptr + rows, kl.argmax(x, axis=1))
    kl.store(col_argmin_ptr + cols, kl.argmin(x, axis=0))
    kl.store(total_ptr, kl.sum(x > 0) + kl.min(x))


@kdsl.jit(interpret=True)
def c_division_kernel(a_ptr, b_ptr, quotient_ptr, remainder_ptr, ratio_ptr, n,
                      BLOCK: kl.constexpr):
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    mask = offs < n
    a = kl.load(a_ptr + offs, mask=mask, other=1)
    b = kl.load(b_ptr + offs, mask=mask, other=1)
    kl.store(quotient_ptr + offs, a // b, mask=mask)
    kl.store(remainder_ptr + offs, a % b, mask=mask)
    kl.store(ratio_ptr + offs, a / b, mask=mask)


@kdsl.jit(interpret=True)
def fp16_kernel(x_ptr, out16_ptr, out32_ptr, rounded_ptr, n, BLOCK: kl.constexpr):
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask)          # fp16 in memory, float32 here
    y = x * 3 + 0.1
    kl.store(out16_ptr + offs, y, mask=mask)      # rounds to fp16
    kl.store(out32_ptr + offs, y, mask=mask)
    half = y.to(kl.float16)
    kl.store(rounded_ptr + offs, half + half, mask=mask)


@kdsl.jit(interpret=True)
def bitcast_kernel(bits_ptr, out_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    bits = kl.load(bits_ptr + offs)               # uint16 storage of fp16 values
    kl.store(out_ptr + offs, bits.to(kl.float16, bitcast=True).to(kl.float32) + 0)


@kdsl.jit
def leaky(x, SLOPE: kl.constexpr = 0.5):
    """A shared helper: inlined where it is called."""
    return kl.where(x > 0, x, x * SLOPE)


@kdsl.jit
def low_high(a, b):
    return kl.minimum(a, b), kl.maximum(a, b)


@kdsl.jit
def half_of(i):
    return i // 2


@kdsl.jit(interpret=True)
def helper_kernel(x_ptr, y_ptr, out_ptr, halves_ptr, n, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    low, high = low_high(kl.load(x_ptr + offs), kl.load(y_ptr + offs))
    kl.store(out_ptr + offs, leaky(low, SLOPE=0.1) + leaky(high))
    kl.store(halves_ptr, half_of(n))            # a runtime int32: C division
    kl.store(halves_ptr + 1, half_of(-7))       # a constexpr: Python's floor division


@kdsl.jit(interpret=True)
def collatz_kernel(start_ptr, steps_ptr, odd_ptr, LIMIT: kl.constexpr):
    """Scalar control flow: while with break, for with continue, if/else."""
    pid = kl.program_id(0)
    v = kl.load(start_ptr + pid)
    steps = 0
    while v != 1:
        if steps >= LIMIT:
            break
        elif v % 2 == 0:
            v = v // 2
        else:
            v = 3 * v + 1
        steps += 1
    odd = 0
    for i in kl.range(kl.load(start_ptr + pid)):
        if i % 2 == 0:
            continue
        odd += 1
    kl.store(steps_ptr + pid, steps)
    kl.store(odd_ptr + pid, odd)


@kdsl.jit(interpret=True)
def out_of_bounds_kernel(x_ptr, out_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)  # the unmasked load
    kl.store(out_ptr + offs, x)


# -------------------------------------------------------------------- tests
@given(n=sizes, block=st.sampled_from([1, 16, 256]))
def test_vector_add_matches_numpy(n, block):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    y = np.arange(n, dtype=np.float32)
    out = np.full(n, np.nan, np.float32)
    add_kernel[(kdsl.cdiv(n, block),)](x, y, out, n, BLOCK=block)
    np.testing.assert_array_equal(out, x + y)


def test_vector_add_on_tensors_writes_back_only_what_is_stored():
    x = kdsl.tensor(np.arange(1000, dtype=np.float32))
    y = kdsl.tensor(np.ones(1000, np.float32))
    out = kdsl.zeros((1000,))
    add_kernel[(4,)](x, y, out, 1000, BLOCK=256)
    np.testing.assert_array_equal(out.numpy(), np.arange(1000) + 1)
    np.testing.assert_array_equal(x.numpy(), np.arange(1000))


def test_the_same_array_twice_is_one_memory():
    x = np.arange(10, dtype=np.float32)
    add_kernel[(1,)](x, x, x, 10, BLOCK=16)
    np.testing.assert_array_equal(x, 2 * np.arange(10))


def test_non_contiguous_arrays_are_read_and_written_in_logical_order():
    x = np.arange(20, dtype=np.float32)[::2]
    out = np.zeros((10, 2), np.float32)[:, 0]
    add_kernel[(1,)](x, x, out, 10, BLOCK=16)
    np.testing.assert_array_equal(out, 2 * x)


@settings(max_examples=15)
@given(rows=st.integers(1, 9), n_cols=st.sampled_from([1, 3, 64, 100, 781]))
def test_softmax_matches_numpy(rows, n_cols):
    x = np.random.default_rng(rows).standard_normal((rows, n_cols)).astype(np.float32) * 5
    out = kdsl.empty((rows, n_cols))
    softmax_kernel[(rows,)](out, kdsl.tensor(x), n_cols, n_cols, n_cols, BLOCK=next_pow2(n_cols))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out.numpy(), e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


@settings(max_examples=10)
@given(rows=st.integers(1, 5), n_cols=st.sampled_from([1, 7, 128, 300]),
       block=st.sampled_from([4, 128]))
def test_layer_norm_matches_numpy(rows, n_cols, block):
    rng = np.random.default_rng(n_cols)
    x = rng.standard_normal((rows, n_cols)).astype(np.float32)
    w, b = rng.standard_normal((2, n_cols)).astype(np.float32)
    y = np.zeros_like(x)
    mean, rstd = np.zeros(rows, np.float32), np.zeros(rows, np.float32)
    layer_norm_kernel[(rows,)](x, y, w, b, mean, rstd, n_cols, n_cols, 1e-5, BLOCK=block)
    expected_rstd = 1 / np.sqrt(x.var(axis=1) + 1e-5)
    np.testing.assert_allclose(mean, x.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rstd, expected_rstd, rtol=1e-4)
    expected = (x - x.mean(axis=1, keepdims=True)) * expected_rstd[:, None] * w + b
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@given(m=st.integers(0, 40), n=st.integers(0, 40))
def test_2d_broadcasting_of_rows_and_columns(m, n):
    x = np.arange(m, dtype=np.float32)
    y = np.arange(n, dtype=np.float32) / 7
    out = np.zeros((m, n), np.float32)
    outer_kernel[(kdsl.cdiv(m, 8), kdsl.cdiv(n, 16))](x, y, out, m, n, BM=8, BN=16)
    np.testing.assert_array_equal(out, x[:, None] * 3 + y[None, :])


@settings(max_examples=15)
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 40))
def test_dot_of_tiles_matches_matmul(m, n, k):
    rng = np.random.default_rng(m * n * k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.zeros((m, n), np.float32)
    matmul_kernel[(kdsl.cdiv(m, 16), kdsl.cdiv(n, 16))](a, b, c, m, n, k, BM=16, BN=16, BK=8)
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)


def test_reductions_and_first_index_on_ties():
    x = np.random.default_rng(0).integers(-3, 4, (8, 16)).astype(np.float32)
    x[2] = 5                                      # a row of ties
    row_sum, col_max = np.zeros(8, np.float32), np.zeros(16, np.float32)
    row_argmax, col_argmin = np.zeros(8, np.int32), np.zeros(16, np.int32)
    total = np.zeros(1, np.float32)
    reductions_kernel[(1,)](x, row_sum, col_max, row_argmax, col_argmin, total, R=8, C=16)
    np.testing.assert_array_equal(row_sum, x.sum(axis=1))
    np.testing.assert_array_equal(col_max, x.max(axis=0))
    np.testing.assert_array_equal(row_argmax, x.argmax(axis=1))
    assert row_argmax[2] == 0
    np.testing.assert_array_equal(col_argmin, x.argmin(axis=0))
    assert total[0] == (x > 0).sum() + x.min()


def test_masked_off_lanes_are_never_read_and_give_other():
    x = np.arange(5, dtype=np.int32)
    out = np.zeros(8, np.float32)
    shift = 2

    @kdsl.jit(interpret=True)
    def shifted(x_ptr, out_ptr, n, BLOCK: kl.constexpr):
        offs = kl.arange(0, BLOCK) - shift       # negative offsets, masked off
        inside = (offs >= 0) & (offs < n)
        kl.store(out_ptr + offs + shift, kl.load(x_ptr + offs, mask=inside, other=-1.5))

    shifted[(1,)](x, out, 5, BLOCK=8)
    # `other` converts to the pointer's int32: -1.5 truncates to -1
    np.testing.assert_array_equal(out, [-1, -1, 0, 1, 2, 3, 4, -1])


int32s = st.integers(-2**31 + 1, 2**31 - 1)


@given(pairs=st.lists(st.tuples(int32s, int32s.filter(bool)), max_size=300))
def test_integer_division_truncates_toward_zero_like_c(pairs):
    a = np.array([p[0] for p in pairs], np.int32)
    b = np.array([p[1] for p in pairs], np.int32)
    n = len(pairs)
    quotient, remainder = np.zeros(n, np.int32), np.zeros(n, np.int32)
    ratio = np.zeros(n, np.float32)
    c_division_kernel[(kdsl.cdiv(n, 64),)](a, b, quotient, remainder, ratio, n, BLOCK=64)
    expected_q = [abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1) for x, y in pairs]
    np.testing.assert_array_equal(quotient, np.array(expected_q, np.int64))
    np.testing.assert_array_equal(remainder, a.astype(np.int64) - b.astype(np.int64) * expected_q)
    np.testing.assert_array_equal(ratio, a.astype(np.float32) / b.astype(np.float32))


@given(n=sizes)
def test_fp16_is_a_storage_type(n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float16)
    out16 = np.zeros(n, np.float16)
    out32, rounded = np.zeros(n, np.float32), np.zeros(n, np.float32)
    fp16_kernel[(kdsl.cdiv(n, 128),)](x, out16, out32, rounded, n, BLOCK=128)
    y = x.astype(np.float32) * np.float32(3) + np.float32(0.1)
    np.testing.assert_array_equal(out32, y)
    np.testing.assert_array_equal(out16, y.astype(np.float16))
    # fp16 + fp16 computes in float32: no second rounding to fp16
    half = y.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(rounded, half + half)


def test_bitcast_reinterprets_fp16_storage():
    values = np.array([1.5, -2.0, 65504, 0.1, -0.0, np.inf, 3e-5, 7], np.float16)
    out = np.zeros(8, np.float32)
    bitcast_kernel[(1,)](values.view(np.uint16), out, BLOCK=8)
    np.testing.assert_array_equal(out, values.astype(np.float32))


def test_jit_helpers_are_inlined_with_constexprs_and_tuple_returns():
    x = np.array([-4, -1, 2, 8], np.float32)
    y = np.array([1, -2, -6, 3], np.float32)
    out, halves = np.zeros(4, np.float32), np.zeros(2, np.int32)
    helper_kernel[(1,)](x, y, out, halves, -7, BLOCK=4)
    assert list(halves) == [-3, -4]

    def leaky_np(v, slope):
        return np.where(v > 0, v, v * np.float32(slope))

    expected = leaky_np(np.minimum(x, y), 0.1) + leaky_np(np.maximum(x, y), 0.5)
    np.testing.assert_array_equal(out, expected)


def collatz_steps(v, limit):
    steps = 0
    while v != 1 and steps < limit:
        v = v // 2 if v % 2 == 0 else 3 * v + 1
        steps += 1
    return steps


def test_while_break_continue_on_scalars():
    starts = np.array([1, 2, 3, 6, 7, 27, 97], np.int32)
    steps, odd = np.zeros(7, np.int32), np.zeros(7, np.int32)
    collatz_kernel[(7,)](starts, steps, odd, LIMIT=100)
    np.testing.assert_array_equal(steps, [collatz_steps(int(v), 100) for v in starts])
    np.testing.assert_array_equal(odd, starts // 2)


def test_out_of_bounds_load_names_the_line_index_and_size():
    with pytest.raises(kdsl.OutOfBoundsError) as info:
        out_of_bounds_kernel[(1,)](np.zeros(10, np.float32), np.zeros(16, np.float32), BLOCK=16)
    message = str(info.value)
    line = line_of(out_of_bounds_kernel, "the unmasked load")
    assert f"test_interpreter.py:{line}:" in message
    assert "index 10" in message and "10 elements" in message and "x_ptr" in message


def test_out_of_bounds_store_is_caught_too():
    @kdsl.jit(interpret=True)
    def store_past_end(out_ptr, BLOCK: kl.constexpr):
        kl.store(out_ptr + kl.program_id(0) * BLOCK + kl.arange(0, BLOCK), 1.0)

    with pytest.raises(kdsl.OutOfBoundsError, match="index 12 of 'out_ptr'.*program \\(1, 0, 0\\)"):
        store_past_end[(2,)](np.zeros(12, np.float32), BLOCK=8)


@kdsl.jit(interpret=True)
def math_kernel(x_ptr, out_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    results = (kl.exp(x), kl.exp2(x), kl.log(x), kl.log2(x), kl.sqrt(x), kl.rsqrt(x),
               kl.sin(x), kl.cos(x), kl.sigmoid(x), kl.fma(x, x, -x), kl.abs(-x),
               kl.maximum(x, float("nan")), kl.minimum(x, 2.0), x ** 2)
    for k in kl.static_range(14):
        kl.store(out_ptr + k * BLOCK + offs, results[k])


def test_math_functions_round_the_float64_result_once():
    x = np.array([0.1, 0.5, 1.0, 2.0, 3.7, 10.0, 1e-3, 88.0], np.float32)
    out = np.zeros((14, 8), np.float32)
    math_kernel[(1,)](x, out, BLOCK=8)
    d = x.astype(np.float64)
    expected = [np.exp(d), np.exp2(d), np.log(d), np.log2(d), np.sqrt(d), 1 / np.sqrt(d),
                np.sin(d), np.cos(d), 1 / (1 + np.exp(-d)), d * d - d, d,
                d, np.minimum(d, 2), d ** 2]
    np.testing.assert_array_equal(out, np.array(expected).astype(np.float32))


# ------------------------------------------------------------ type rules
@kdsl.jit(interpret=True)
def promotion_kernel(flags_ptr, i8_ptr, u32_ptr, f16_ptr):
    i8 = kl.load(i8_ptr + kl.arange(0, 2))
    u32 = kl.load(u32_ptr)
    i32 = kl.program_id(0)
    h = kl.load(f16_ptr).to(kl.float16)
    checks = (
        (i8 + i8).dtype == kl.int32,                 # small ints promote
        (i8 * 2).dtype == kl.int32,
        (i32 + u32).dtype == kl.uint32,
        (i32 * 0.5).dtype == kl.float32,             # a float literal makes float32
        (i32 + 2).dtype == kl.int32,                 # an int literal is weak
        (i32 / 2).dtype == kl.float32,
        (h + h).dtype == kl.float32,                 # fp16 computes in float32
        h.dtype == kl.float16,
        kl.load(f16_ptr).dtype == kl.float32,
        ((i8 > 0) & (i8 < 5)).dtype == kl.int1,
        ((i8 > 0) + 1).dtype == kl.int32,
        (i8 < 1).dtype == kl.int1,
        kl.sum(i8 > 0).dtype == kl.int32,
        kl.argmax(i8, 0).dtype == kl.int32,
        kl.exp(i32).dtype == kl.float32,
        kl.abs(i32).dtype == kl.int32,
        kl.dot(i8[:, None], i8[None, :]).dtype == kl.int32,
        (i32 ** 2).dtype == kl.int32,
        (i32 ** 0.5).dtype == kl.float32,
        (i8 + i8).shape == (2,),
        u32.shape == (),
    )
    for k in kl.static_range(len(checks)):
        kl.store(flags_ptr + k, checks[k])


def test_type_promotion_rules():
    flags = np.zeros(21, np.bool_)
    promotion_kernel[(1,)](flags, np.array([1, -1], np.int8), np.array([7], np.uint32),
                           np.array([1.5], np.float16))
    assert flags.all(), np.flatnonzero(~flags)


@kdsl.jit(interpret=True)
def integer_bits_kernel(out_ptr, x, shift):
    kl.store(out_ptr + 0, x << shift)               # shift counts wrap at 32, as in OpenCL
    kl.store(out_ptr + 1, x >> 1)                   # arithmetic shift of a negative int
    kl.store(out_ptr + 2, (x.to(kl.uint32) >> 1).to(kl.int32, bitcast=True))
    kl.store(out_ptr + 3, ~x)
    kl.store(out_ptr + 4, (x & 0xFF) ^ 0x0F)
    kl.store(out_ptr + 5, x * 2147483647)           # overflow wraps
    kl.store(out_ptr + 6, kl.cdiv(-x, 4))
    kl.store(out_ptr + 7, (1 - 2 * kl.abs(x)) // 4)  # C: -11 // 4 == -2
    kl.store(out_ptr + 8, (1 - 2 * kl.abs(x)) % 4)   # C: -11 % 4 == -3


def wrap32(value):
    return (value + 2**31) % 2**32 - 2**31


def test_integer_bits_shifts_and_wrapping():
    out = np.zeros(9, np.int32)
    integer_bits_kernel[(1,)](out, -6, 33)
    assert list(out) == [-12, -3, (2**32 - 6) >> 1, 5, 250 ^ 15, wrap32(-6 * 2147483647),
                         2, -2, -3]


@kdsl.jit(interpret=True)
def python_level_kernel(out_ptr, n, MODE: kl.constexpr, BLOCK: kl.constexpr):
    """Constexpr folding, module constants, math, and Python builtins."""
    offs = kl.arange(0, BLOCK)
    half = BLOCK // 2 if MODE == "half" else BLOCK
    scale = math.pi * SCALE + abs(-1) + min(2, half) + len((1, 2)) + int(2.9)
    x = kl.full((BLOCK,), scale, kl.float32)
    steps = kdsl.cdiv(n, BLOCK)
    big = n > 3 and not (n > 100) or MODE == "never"
    x = x + (1.0 if big else 0.0) + steps
    x = kl.where(offs < half, x, -x)
    kl.store(out_ptr + offs, kl.maximum(x, float("-inf")), mask=offs < n)


def test_python_level_values_fold_at_compile_time():
    out = np.zeros(8, np.float32)
    python_level_kernel[(1,)](out, 5, MODE="half", BLOCK=8)
    value = np.float32(math.pi * 3 + 1 + 2 + 2 + 2) + 1 + 1
    np.testing.assert_array_equal(out[:5], [value] * 4 + [-value])
    assert (out[5:] == 0).all()


@kdsl.jit(interpret=True)
def grid_kernel(out_ptr):
    """Each program writes its linear index: axis 0 fastest."""
    x, y, z = kl.program_id(0), kl.program_id(1), kl.program_id(2)
    nx, ny = kl.num_programs(0), kl.num_programs(1)
    kl.store(out_ptr + (z * ny + y) * nx + x, (z * 100 + y * 10 + x).to(kl.float32))


def test_three_dimensional_grid():
    out = np.zeros(24, np.float32)
    grid_kernel[(4, 3, 2)](out)
    z, y, x = np.meshgrid(range(2), range(3), range(4), indexing="ij")
    np.testing.assert_array_equal(out, (z * 100 + y * 10 + x).reshape(-1))


@kdsl.jit(interpret=True)
def shapes_kernel(x_ptr, out_ptr, R: kl.constexpr, C: kl.constexpr):
    rows, cols = kl.arange(0, R), kl.arange(0, C)
    x = kl.load(x_ptr + rows[:, None] * C + cols[None, :])
    t = kl.trans(x)
    flat = kl.reshape(t, (R * C,))
    kl.store(out_ptr + kl.arange(0, R * C), flat + kl.fma(x, 2.0, 1.0).shape[0] * 0)


def test_trans_and_reshape():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = np.zeros(8, np.float32)
    shapes_kernel[(1,)](x, out, R=2, C=4)
    np.testing.assert_array_equal(out, x.T.reshape(-1))


def test_every_builtin_has_an_implementation():
    implemented = {fn.__name__ for fn in interpreter._BUILTINS} | {"program_id", "num_programs"}
    assert set(kl.BUILTINS) <= implemented


# ------------------------------------------------------------------- errors
def compile_error_of(kernel, *args, **kwargs):
    with pytest.raises(kdsl.CompileError) as info:
        kernel[(1,)](*args, **kwargs)
    return info.value


def test_unknown_name_is_a_compile_error_with_a_caret():
    @kdsl.jit(interpret=True)
    def typo(x_ptr, BLOCK: kl.constexpr):
        offs = kl.arange(0, BLOCK)
        kl.store(x_ptr + offz, 1.0)

    error = compile_error_of(typo, np.zeros(4, np.float32), BLOCK=4)
    assert "unknown name 'offz'" in error.message
    assert error.line == line_of(typo, "offz") and error.col == 26
    assert error.filename.endswith("test_interpreter.py") and "^" in str(error)


def test_block_condition_is_a_compile_error():
    @kdsl.jit(interpret=True)
    def branchy(x_ptr, BLOCK: kl.constexpr):
        x = kl.load(x_ptr + kl.arange(0, BLOCK))
        if x > 0:
            kl.store(x_ptr, 1.0)

    error = compile_error_of(branchy, np.zeros(4, np.float32), BLOCK=4)
    assert "condition must be a scalar" in error.message and "kl.where" in error.message
    assert error.line == line_of(branchy, "if x > 0")


def test_non_power_of_two_arange_is_a_compile_error():
    @kdsl.jit(interpret=True)
    def odd(x_ptr, BLOCK: kl.constexpr):
        kl.store(x_ptr + kl.arange(0, BLOCK), 1.0)

    error = compile_error_of(odd, np.zeros(4, np.float32), BLOCK=100)
    assert "power of two" in error.message


def test_calling_a_plain_function_is_a_compile_error():
    @kdsl.jit(interpret=True)
    def calls_numpy(x_ptr):
        kl.store(x_ptr, np.exp(1.0))

    error = compile_error_of(calls_numpy, np.zeros(1, np.float32))
    assert "'np.exp' is not a" in error.message and "@kdsl.jit function" in error.message


def test_float_floor_division_is_an_error():
    @kdsl.jit(interpret=True)
    def floor_float(x_ptr):
        kl.store(x_ptr, kl.load(x_ptr) // 2)

    error = compile_error_of(floor_float, np.zeros(1, np.float32))
    assert "'//' needs integer operands" in error.message
