"""The kernel language's semantics, on the OpenCL device and in the interpreter, against numpy.

One test per feature of the language contract (docs: kdsl/language.py and
DESIGN.md): broadcasting, reductions, math functions, C integer semantics,
bit operations, casts and bitcasts, trans/reshape/dot, scalar control flow,
static_range, inlined helpers, module constants, tensor views, scalar
memory access, the 3-D grid and num_threads.
"""
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import kdsl
import kdsl.language as kl

SCALE = 3                      # module-level constants, read by kernels
OFFSET = 0.5
BIG = float("inf")

both_backends = pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])


def launch(kernel, interpret, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs) on the device or in the interpreter."""
    kernel._interpret = interpret
    try:
        kernel[grid](*args, **kwargs)
    finally:
        kernel._interpret = None


def c_div(a, b):
    """C's integer division (truncating toward zero) and remainder, in int64."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    q = np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)
    return q, a - b * q


# ---------------------------------------------------------------- broadcasting
@kdsl.jit
def outer_kernel(x_ptr, y_ptr, out_ptr, R: kl.constexpr, C: kl.constexpr):
    rows = kl.arange(0, R)
    cols = kl.arange(0, C)
    x = kl.load(x_ptr + rows)
    y = kl.load(y_ptr + cols)
    grid = x[:, None] * 10 + y[None, :]
    kl.store(out_ptr + rows[:, None] * C + cols[None, :], grid)
    # a [R, 1] column and a [1, C] row broadcast against a [R, C] block and a scalar
    kl.store(out_ptr + R * C + rows[:, None] * C + cols[None, :], grid - x[:, None] + 0.5)
    kl.store(out_ptr + 2 * R * C + rows[:, None] * C + cols[None, :], y[None, :] + 0 * grid)


@both_backends
def test_broadcasting_2d(interpret):
    R, C = 4, 16
    x = np.arange(R, dtype=np.float32) + 1
    y = -np.arange(C, dtype=np.float32)
    out = np.zeros(3 * R * C, np.float32)
    launch(outer_kernel, interpret, (1,), x, y, out, R=R, C=C)
    grid = x[:, None] * 10 + y[None, :]
    np.testing.assert_array_equal(out[:R * C].reshape(R, C), grid)
    np.testing.assert_array_equal(out[R * C:2 * R * C].reshape(R, C), grid - x[:, None] + 0.5)
    np.testing.assert_array_equal(out[2 * R * C:].reshape(R, C), np.broadcast_to(y, (R, C)))


# ------------------------------------------------------------------ reductions
@kdsl.jit
def reductions_kernel(x_ptr, sum0, sum1, sum_all, max0, max1, max_all, min0, min1,
                      min_all, argmax0, argmax1, argmin0, argmin1, keep0, keep1,
                           R: kl.constexpr, C: kl.constexpr):
    rows = kl.arange(0, R)
    cols = kl.arange(0, C)
    x = kl.load(x_ptr + rows[:, None] * C + cols[None, :])
    kl.store(sum0 + cols, kl.sum(x, axis=0))
    kl.store(sum1 + rows, kl.sum(x, axis=1))
    kl.store(sum_all, kl.sum(x))
    kl.store(max0 + cols, kl.max(x, axis=0))
    kl.store(max1 + rows, kl.max(x, axis=1))
    kl.store(max_all, kl.max(x))
    kl.store(min0 + cols, kl.min(x, axis=0))
    kl.store(min1 + rows, kl.min(x, axis=1))
    kl.store(min_all, kl.min(x, axis=None))
    kl.store(argmax0 + cols, kl.argmax(x, axis=0))
    kl.store(argmax1 + rows, kl.argmax(x, axis=1))
    kl.store(argmin0 + cols, kl.argmin(x, axis=0))
    kl.store(argmin1 + rows, kl.argmin(x, axis=1))
    kl.store(keep0 + cols[None, :], kl.max(x, axis=0, keep_dims=True))
    kl.store(keep1 + rows[:, None], kl.sum(x, axis=1, keep_dims=True))


@both_backends
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_reductions_along_each_axis(interpret, dtype):
    R, C = 8, 16
    rng = np.random.default_rng(7)
    # few distinct values: many ties, which argmax/argmin break by the first index
    x = rng.integers(-3, 4, size=(R, C)).astype(dtype)
    x[2, :] = 5                    # a row that is all ties
    x[:, 3] = -9                   # a column that is all ties
    out = {
        "sum0": np.zeros(C, dtype), "sum1": np.zeros(R, dtype), "sum_all": np.zeros(1, dtype),
        "max0": np.zeros(C, dtype), "max1": np.zeros(R, dtype), "max_all": np.zeros(1, dtype),
        "min0": np.zeros(C, dtype), "min1": np.zeros(R, dtype), "min_all": np.zeros(1, dtype),
        "argmax0": np.full(C, -1, np.int32), "argmax1": np.full(R, -1, np.int32),
        "argmin0": np.full(C, -1, np.int32), "argmin1": np.full(R, -1, np.int32),
        "keep0": np.zeros(C, dtype), "keep1": np.zeros(R, dtype),
    }
    launch(reductions_kernel, interpret, (1,), x, *out.values(), R=R, C=C)
    expected = {
        "sum0": x.sum(0), "sum1": x.sum(1), "sum_all": [x.sum()],
        "max0": x.max(0), "max1": x.max(1), "max_all": [x.max()],
        "min0": x.min(0), "min1": x.min(1), "min_all": [x.min()],
        "argmax0": x.argmax(0), "argmax1": x.argmax(1),
        "argmin0": x.argmin(0), "argmin1": x.argmin(1),
        "keep0": x.max(0), "keep1": x.sum(1),
    }
    wrong = {name: (out[name].tolist(), np.asarray(want).tolist())
             for name, want in expected.items()
             if not np.array_equal(out[name], np.asarray(want).astype(out[name].dtype))}
    assert not wrong, f"(got, expected) of the wrong reductions: {wrong}"


@kdsl.jit
def big_reduction_kernel(x_ptr, out_ptr, n, BLOCK: kl.constexpr):
    """Reductions across all work-items of a program, over a masked block."""
    offs = kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask, other=0.0)
    kl.store(out_ptr + 0, kl.sum(x, axis=0))
    kl.store(out_ptr + 1, kl.max(kl.where(mask, x, -float("inf")), axis=0))
    kl.store(out_ptr + 2, kl.argmin(kl.where(mask, x, BIG), axis=0).to(kl.float32))
    kl.store(out_ptr + 3, kl.sum(mask.to(kl.int32), axis=0).to(kl.float32))


@both_backends
@pytest.mark.parametrize("num_threads", [None, 1, 16, 256])
def test_reduction_over_work_items(interpret, num_threads):
    BLOCK = 256
    rng = np.random.default_rng(3)
    for n in (1, 5, 200, 256):
        x = rng.integers(-20, 20, size=BLOCK).astype(np.float32)
        out = np.zeros(4, np.float32)
        kwargs = {} if num_threads is None else {"num_threads": num_threads}
        launch(big_reduction_kernel, interpret, (1,), x, out, n, BLOCK=BLOCK, **kwargs)
        v = x[:n]
        np.testing.assert_array_equal(out, [v.sum(), v.max(), v.argmin(), n], err_msg=f"n={n}")


@kdsl.jit
def accumulate_rows_kernel(x_ptr, y_ptr, total_ptr, ROWS: kl.constexpr, COLS: kl.constexpr):
    """y[r] += the sum of row r, and total += all of x: read-modify-writes of
    a reduction's result (held by several work-items) and of a scalar."""
    r = kl.arange(0, ROWS)
    c = kl.arange(0, COLS)
    x = kl.load(x_ptr + r[:, None] * COLS + c[None, :])
    # the sums first: their barriers must not separate the loads below from the stores
    rows = kl.sum(x, axis=1)
    everything = kl.sum(rows, axis=0)
    kl.store(y_ptr + r, rows + kl.load(y_ptr + r))
    kl.store(total_ptr, everything + kl.load(total_ptr))


@both_backends
@pytest.mark.parametrize("num_threads", [1, 2, 16, 64])
def test_read_modify_write_of_replicated_elements_applies_once(interpret, num_threads):
    # more work-items than the result has elements: each element is still written once
    x = np.arange(4 * 8, dtype=np.float32).reshape(4, 8)
    y = np.full(4, 100.0, np.float32)
    total = np.full(1, 1.0, np.float32)
    launch(accumulate_rows_kernel, interpret, (1,), x, y, total, ROWS=4, COLS=8,
           num_threads=num_threads)
    np.testing.assert_array_equal(y, 100.0 + x.sum(axis=1))
    np.testing.assert_array_equal(total, [1.0 + x.sum()])


@kdsl.jit
def store_then_load_kernel(flag_ptr, out_ptr, BLOCK: kl.constexpr):
    """A scalar stored by one work-item, then read back by all."""
    kl.store(flag_ptr + kl.program_id(0), kl.program_id(0) + 7)
    seen = kl.load(flag_ptr + kl.program_id(0))
    kl.store(out_ptr + kl.program_id(0) * BLOCK + kl.arange(0, BLOCK), seen)


def test_a_store_read_back_in_the_program_is_fenced():
    # one work-item stores; the others must see it (a GPU's warps need the fence)
    from kdsl.checker import check
    from kdsl.codegen_opencl import generate
    flags, out = np.zeros(3, np.int32), np.zeros(3 * 64, np.int32)
    launch(store_then_load_kernel, False, (3,), flags, out, BLOCK=64, num_threads=64)
    np.testing.assert_array_equal(out.reshape(3, 64), np.repeat([[7], [8], [9]], 64, axis=1))
    values, threads = store_then_load_kernel.bind(
        (kdsl.tensor(flags), kdsl.tensor(out)), {"BLOCK": 64, "num_threads": 64})
    source = generate(check(store_then_load_kernel, values, threads), {"is_cpu": False})
    guarded = source.index("if (lid == 0)")
    assert "barrier(CLK_GLOBAL_MEM_FENCE)" in source[guarded:source.index("= *(", guarded)]
    # the store to out, which nothing reads back, gets none
    assert source.count("CLK_GLOBAL_MEM_FENCE") == 1


# ----------------------------------------------------------------- where, masks
@kdsl.jit
def where_kernel(x_ptr, y_ptr, out_ptr, positive_ptr, n, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask)            # `other` defaults to 0
    y = kl.load(y_ptr + offs, mask=mask, other=-1.0)
    kl.store(out_ptr + offs, kl.where(x > 0, x, y * 2))
    kl.store(out_ptr + BLOCK + offs, kl.where(x > y, 1.0, -1.0))
    kl.store(out_ptr + 2 * BLOCK + offs, kl.where(offs % 2 == 0, x, 7))
    kl.store(positive_ptr + offs, x > 0, mask=mask)


@both_backends
def test_where_and_masked_loads(interpret):
    BLOCK, n = 32, 21
    rng = np.random.default_rng(4)
    x = rng.standard_normal(BLOCK).astype(np.float32)
    y = rng.standard_normal(BLOCK).astype(np.float32)
    out = np.zeros(3 * BLOCK, np.float32)
    positive = np.zeros(BLOCK, np.bool_)
    launch(where_kernel, interpret, (1,), x, y, out, positive, n, BLOCK=BLOCK)
    xm = np.where(np.arange(BLOCK) < n, x, 0)
    ym = np.where(np.arange(BLOCK) < n, y, -1)
    np.testing.assert_array_equal(out[:BLOCK], np.where(xm > 0, xm, ym * 2))
    np.testing.assert_array_equal(out[BLOCK:2 * BLOCK], np.where(xm > ym, 1.0, -1.0))
    np.testing.assert_array_equal(out[2 * BLOCK:], np.where(np.arange(BLOCK) % 2 == 0, xm, 7))
    np.testing.assert_array_equal(positive[:n], x[:n] > 0)
    assert not positive[n:].any()


# ----------------------------------------------------------------- math
MATH = ["exp", "exp2", "log", "log2", "sqrt", "rsqrt", "abs", "sin", "cos", "sigmoid",
        "maximum", "minimum", "fma"]


@kdsl.jit
def math_kernel(x_ptr, y_ptr, out_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)           # any sign
    y = kl.load(y_ptr + offs)           # positive
    kl.store(out_ptr + 0 * BLOCK + offs, kl.exp(x))
    kl.store(out_ptr + 1 * BLOCK + offs, kl.exp2(x))
    kl.store(out_ptr + 2 * BLOCK + offs, kl.log(y))
    kl.store(out_ptr + 3 * BLOCK + offs, kl.log2(y))
    kl.store(out_ptr + 4 * BLOCK + offs, kl.sqrt(y))
    kl.store(out_ptr + 5 * BLOCK + offs, kl.rsqrt(y))
    kl.store(out_ptr + 6 * BLOCK + offs, kl.abs(x))
    kl.store(out_ptr + 7 * BLOCK + offs, kl.sin(x))
    kl.store(out_ptr + 8 * BLOCK + offs, kl.cos(x))
    kl.store(out_ptr + 9 * BLOCK + offs, kl.sigmoid(x))
    kl.store(out_ptr + 10 * BLOCK + offs, kl.maximum(x, y))
    kl.store(out_ptr + 11 * BLOCK + offs, kl.minimum(x, y))
    kl.store(out_ptr + 12 * BLOCK + offs, kl.fma(x, y, x))


@both_backends
def test_math_functions(interpret):
    BLOCK = 64
    rng = np.random.default_rng(5)
    x = rng.uniform(-10, 10, BLOCK).astype(np.float32)
    x[:4] = [0.0, -0.0, 1.0, -1.5]
    y = np.exp(rng.uniform(-5, 5, BLOCK)).astype(np.float32)
    y[:2] = [1.0, 4.0]
    out = np.zeros(len(MATH) * BLOCK, np.float32)
    launch(math_kernel, interpret, (1,), x, y, out, BLOCK=BLOCK)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    expected = {
        "exp": np.exp(xd), "exp2": np.exp2(xd), "log": np.log(yd), "log2": np.log2(yd),
        "sqrt": np.sqrt(yd), "rsqrt": 1 / np.sqrt(yd), "abs": np.abs(xd), "sin": np.sin(xd),
        "cos": np.cos(xd), "sigmoid": 1 / (1 + np.exp(-xd)), "maximum": np.maximum(xd, yd),
        "minimum": np.minimum(xd, yd), "fma": xd * yd + xd,
    }
    for i, name in enumerate(MATH):
        np.testing.assert_allclose(out[i * BLOCK:(i + 1) * BLOCK], expected[name],
                                   rtol=1e-5, atol=1e-6, err_msg=name)


@kdsl.jit
def nan_kernel(x_ptr, out_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    kl.store(out_ptr + offs, kl.maximum(x, 1.0))
    kl.store(out_ptr + BLOCK + offs, kl.minimum(x, 1.0))
    kl.store(out_ptr + 2 * BLOCK + offs, kl.abs(x))


@both_backends
def test_maximum_minimum_nan_and_infinities(interpret):
    """As OpenCL's fmax/fmin: a NaN operand loses to the other one."""
    x = np.array([np.nan, np.inf, -np.inf, 0.5, 2.0, -0.0, 3.0, -7.0], np.float32)
    out = np.zeros(24, np.float32)
    launch(nan_kernel, interpret, (1,), x, out, BLOCK=8)
    np.testing.assert_array_equal(out[:8], [1.0, np.inf, 1.0, 1.0, 2.0, 1.0, 3.0, 1.0])
    np.testing.assert_array_equal(out[8:16], [1.0, 1.0, -np.inf, 0.5, 1.0, -0.0, 1.0, -7.0])
    np.testing.assert_array_equal(out[16:], np.abs(x))


# ----------------------------------------------------------------- integers
@kdsl.jit
def int_ops_kernel(a_ptr, b_ptr, out_ptr, ratio_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    a = kl.load(a_ptr + offs)
    b = kl.load(b_ptr + offs)
    kl.store(out_ptr + 0 * BLOCK + offs, a // b)
    kl.store(out_ptr + 1 * BLOCK + offs, a % b)
    kl.store(out_ptr + 2 * BLOCK + offs, a // 3)
    kl.store(out_ptr + 3 * BLOCK + offs, a % -4)
    kl.store(out_ptr + 4 * BLOCK + offs, -a + a * 2 - b)
    kl.store(out_ptr + 5 * BLOCK + offs, kl.abs(a))
    kl.store(out_ptr + 6 * BLOCK + offs, kl.maximum(a, b) - kl.minimum(a, b))
    kl.store(out_ptr + 7 * BLOCK + offs, kl.cdiv(a, 4))
    kl.store(ratio_ptr + offs, a / b)


@both_backends
def test_integer_division_truncates_toward_zero(interpret):
    BLOCK = 64
    rng = np.random.default_rng(6)
    a = rng.integers(-1000, 1000, BLOCK).astype(np.int32)
    b = rng.integers(1, 13, BLOCK).astype(np.int32) * rng.choice([-1, 1], BLOCK).astype(np.int32)
    a[:8] = [-7, 7, -7, 7, 0, -1, 2147483647, -2147483647]
    b[:8] = [2, -2, -2, 2, -5, 3, 10, 10]
    out = np.zeros(8 * BLOCK, np.int32)
    ratio = np.zeros(BLOCK, np.float32)
    launch(int_ops_kernel, interpret, (1,), a, b, out, ratio, BLOCK=BLOCK)
    q, r = c_div(a, b)
    q3, _ = c_div(a, 3)
    _, r4 = c_div(a, -4)
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    def wrap(v):                # int32 arithmetic wraps
        return (np.asarray(v, np.int64) + 2**31) % 2**32 - 2**31
    expected = [q, r, q3, r4, wrap(a64 - b64), np.abs(a64), wrap(np.abs(a64 - b64)),
                c_div(wrap(a64 + 3), 4)[0]]
    out = out.reshape(8, BLOCK)
    names = ["a // b", "a % b", "a // 3", "a % -4", "-a + a*2 - b", "abs", "max - min", "cdiv"]
    for row, want, name in zip(out, expected, names):
        np.testing.assert_array_equal(row, want, err_msg=name)
    np.testing.assert_allclose(ratio, a.astype(np.float32) / b.astype(np.float32), rtol=1e-6)
    assert out[0, 0] == -3 and out[1, 0] == -1 and out[0, 1] == -3 and out[1, 1] == 1


@kdsl.jit
def bits_kernel(a_ptr, b_ptr, s_ptr, out_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    a = kl.load(a_ptr + offs)
    b = kl.load(b_ptr + offs)
    s = kl.load(s_ptr + offs)
    kl.store(out_ptr + 0 * BLOCK + offs, a & b)
    kl.store(out_ptr + 1 * BLOCK + offs, a | b)
    kl.store(out_ptr + 2 * BLOCK + offs, a ^ b)
    kl.store(out_ptr + 3 * BLOCK + offs, ~a)
    kl.store(out_ptr + 4 * BLOCK + offs, a << s)
    kl.store(out_ptr + 5 * BLOCK + offs, a >> s)
    kl.store(out_ptr + 6 * BLOCK + offs, (a >> 3) & 0xFF)
    kl.store(out_ptr + 7 * BLOCK + offs, a - b)


@both_backends
@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
def test_bit_operations(interpret, dtype):
    BLOCK = 64
    rng = np.random.default_rng(8)
    if dtype == np.int32:
        a = rng.integers(-2**30, 2**30, BLOCK).astype(np.int32)
        b = rng.integers(-2**30, 2**30, BLOCK).astype(np.int32)
        a[:3] = [-1, -5, -2**30]
    else:
        a = rng.integers(0, 2**32, BLOCK, dtype=np.uint64).astype(np.uint32)
        b = rng.integers(0, 2**32, BLOCK, dtype=np.uint64).astype(np.uint32)
        a[:3] = [2**32 - 1, 5, 2**31]
        b[:3] = [1, 7, 2**31 + 1]          # 5 - 7 wraps
    s = rng.integers(0, 32, BLOCK).astype(np.int32)
    s[:3] = [0, 3, 31]
    out = np.zeros(8 * BLOCK, dtype)
    launch(bits_kernel, interpret, (1,), a, b, s, out, BLOCK=BLOCK)
    width = np.uint64(2**32)
    a64 = a.astype(np.int64)
    shifted_left = ((a64 << s.astype(np.int64)) % 2**32).astype(np.uint32).view(dtype)
    expected = [a & b, a | b, a ^ b, ~a, shifted_left, a >> s.astype(dtype),
                (a >> 3) & 0xFF, (a64 - b.astype(np.int64)) % int(width)]
    names = ["&", "|", "^", "~", "<<", ">>", "(a >> 3) & 0xFF", "a - b"]
    for row, want, name in zip(out.reshape(8, BLOCK), expected, names):
        np.testing.assert_array_equal(row, np.asarray(want).astype(np.int64).astype(np.uint64)
                                      .astype(np.uint32).view(dtype), err_msg=name)


@kdsl.jit
def wide_shift_kernel(a_ptr, s_ptr, out_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    a = kl.load(a_ptr + offs)
    s = kl.load(s_ptr + offs)
    kl.store(out_ptr + offs, a << s)
    kl.store(out_ptr + BLOCK + offs, a >> s)


@both_backends
def test_shift_count_taken_modulo_width(interpret):
    """OpenCL C: a shift count is taken modulo the operand's bit width."""
    a = np.array([1, -8, 12345, 3], np.int32)
    s = np.array([32, 33, 35, 63], np.int32)
    out = np.zeros(8, np.int32)
    launch(wide_shift_kernel, interpret, (1,), a, s, out, BLOCK=4)
    np.testing.assert_array_equal(out[:4], a << (s % 32))
    np.testing.assert_array_equal(out[4:], a >> (s % 32))


@kdsl.jit
def small_ints_kernel(i8_ptr, u8_ptr, out_ptr, narrow_ptr, BLOCK: kl.constexpr):
    """int8/uint8 operands compute in int32 (C's integer promotion)."""
    offs = kl.arange(0, BLOCK)
    a = kl.load(i8_ptr + offs)
    b = kl.load(u8_ptr + offs)
    kl.store(out_ptr + offs, a + b + b)
    kl.store(out_ptr + BLOCK + offs, a * 3)
    kl.store(narrow_ptr + offs, (b + 100).to(kl.uint8))


@both_backends
def test_small_integer_promotion(interpret):
    a = np.array([-128, -1, 0, 127, 100, -100, 5, 64], np.int8)
    b = np.array([255, 0, 200, 255, 1, 156, 99, 128], np.uint8)
    out = np.zeros(16, np.int32)
    narrow = np.zeros(8, np.uint8)
    launch(small_ints_kernel, interpret, (1,), a, b, out, narrow, BLOCK=8)
    a32, b32 = a.astype(np.int32), b.astype(np.int32)
    np.testing.assert_array_equal(out[:8], a32 + 2 * b32)
    np.testing.assert_array_equal(out[8:], a32 * 3)
    np.testing.assert_array_equal(narrow, ((b32 + 100) % 256).astype(np.uint8))


# ----------------------------------------------------------------- casts
@kdsl.jit
def cast_kernel(x_ptr, i_ptr, rounded_ptr, trunc_ptr, bits_ptr, neg_ptr, float_ptr, half_ptr,
                BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    i = kl.load(i_ptr + offs)
    kl.store(rounded_ptr + offs, x.to(kl.float16).to(kl.float32))
    kl.store(trunc_ptr + offs, x.to(kl.int32))
    bits = x.to(kl.int32, bitcast=True)
    kl.store(bits_ptr + offs, bits)
    kl.store(neg_ptr + offs, (bits ^ -2147483648).to(kl.float32, bitcast=True))
    kl.store(float_ptr + offs, i.to(kl.float32))
    kl.store(half_ptr + offs, x.to(kl.float16))


@both_backends
def test_casts_and_float32_bitcast(interpret):
    BLOCK = 32
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(BLOCK) * 300).astype(np.float32)
    x[:8] = [0.1, -2.5, 2.5, 65519.0, 65520.0, 1e5, 3e-6, -0.0]
    i = rng.integers(-2**31, 2**31, BLOCK, dtype=np.int64).astype(np.int32)
    i[:2] = [16777217, -16777219]
    outs = [np.zeros(BLOCK, np.float32), np.zeros(BLOCK, np.int32), np.zeros(BLOCK, np.int32),
            np.zeros(BLOCK, np.float32), np.zeros(BLOCK, np.float32), np.zeros(BLOCK, np.float16)]
    launch(cast_kernel, interpret, (1,), x, i, *outs, BLOCK=BLOCK)
    rounded, trunc, bits, neg, as_float, half = outs
    np.testing.assert_array_equal(rounded, x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(trunc, np.trunc(x).astype(np.int32))
    np.testing.assert_array_equal(bits, x.view(np.int32))
    np.testing.assert_array_equal(neg.view(np.int32), (-x).view(np.int32))
    np.testing.assert_array_equal(as_float, i.astype(np.float32))
    np.testing.assert_array_equal(half.view(np.uint16), x.astype(np.float16).view(np.uint16))


@kdsl.jit
def half_bits_kernel(bits_ptr, h_ptr, h_out, bits_out, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    bits = kl.load(bits_ptr + offs)                  # uint16 storage of fp16 values
    kl.store(h_out + offs, bits.to(kl.float16, bitcast=True))
    h = kl.load(h_ptr + offs).to(kl.float16)         # fp16 -> float32 -> float16, exact
    kl.store(bits_out + offs, h.to(kl.uint16, bitcast=True))


@both_backends
def test_uint16_float16_bitcast(interpret):
    h = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, -65504.0, np.inf, -np.inf,
                  6e-8, -6e-8, 6.1e-5, 0.333, 1e-3, 1000.5, 7.0, -0.1], np.float16)
    bits = h.view(np.uint16).copy()
    h_out = np.zeros(16, np.float16)
    bits_out = np.zeros(16, np.uint16)
    launch(half_bits_kernel, interpret, (1,), bits, h, h_out, bits_out, BLOCK=16)
    np.testing.assert_array_equal(h_out.view(np.uint16), bits)
    np.testing.assert_array_equal(bits_out, bits)


@kdsl.jit
def fp16_storage_kernel(x_ptr, out16_ptr, out32_ptr, n, BLOCK: kl.constexpr):
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask)        # float32 values
    y = x * 3 + 0.1
    kl.store(out16_ptr + offs, y, mask=mask)    # rounds
    kl.store(out32_ptr + offs, y, mask=mask)    # does not


@both_backends
def test_fp16_is_a_storage_type(interpret):
    n = 300
    rng = np.random.default_rng(10)
    x = (rng.standard_normal(n) * 100).astype(np.float16)
    out16 = np.zeros(n, np.float16)
    out32 = np.zeros(n, np.float32)
    launch(fp16_storage_kernel, interpret, (kdsl.cdiv(n, 128),), x, out16, out32, n, BLOCK=128)
    y = x.astype(np.float32) * np.float32(3) + np.float32(0.1)
    np.testing.assert_allclose(out32, y, rtol=1e-6)
    np.testing.assert_array_equal(out16, out32.astype(np.float16))


# ----------------------------------------------------------- trans, reshape, dot
@kdsl.jit
def shape_ops_kernel(x_ptr, t_ptr, r_ptr, flat_ptr, R: kl.constexpr, C: kl.constexpr):
    rows = kl.arange(0, R)
    cols = kl.arange(0, C)
    x = kl.load(x_ptr + rows[:, None] * C + cols[None, :])
    kl.store(t_ptr + cols[:, None] * R + rows[None, :], kl.trans(x))
    y = kl.reshape(x, (C, R))
    kl.store(r_ptr + cols[:, None] * R + rows[None, :], y)
    kl.store(flat_ptr + kl.arange(0, R * C), kl.reshape(x, (R * C,)) * 2)


@both_backends
def test_trans_and_reshape(interpret):
    R, C = 4, 16
    x = np.arange(R * C, dtype=np.float32).reshape(R, C)
    t = np.zeros((C, R), np.float32)
    r = np.zeros((C, R), np.float32)
    flat = np.zeros(R * C, np.float32)
    launch(shape_ops_kernel, interpret, (1,), x, t, r, flat, R=R, C=C)
    np.testing.assert_array_equal(t, x.T)
    np.testing.assert_array_equal(r, x.reshape(C, R))
    np.testing.assert_array_equal(flat, 2 * x.reshape(-1))


@kdsl.jit
def dot_kernel(a_ptr, b_ptr, c_ptr, d_ptr, e_ptr, M: kl.constexpr, N: kl.constexpr,
               K: kl.constexpr):
    rm = kl.arange(0, M)
    rn = kl.arange(0, N)
    rk = kl.arange(0, K)
    a = kl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = kl.load(b_ptr + rk[:, None] * N + rn[None, :])
    c = kl.load(c_ptr + rm[:, None] * N + rn[None, :])
    kl.store(d_ptr + rm[:, None] * N + rn[None, :], kl.dot(a, b, acc=c))
    e = kl.zeros((M, N), kl.float32)
    e += kl.dot(a, b)
    e = kl.dot(a, b, e)
    kl.store(e_ptr + rm[:, None] * N + rn[None, :], e)


@both_backends
@pytest.mark.parametrize("shape", [(16, 16, 16), (32, 8, 64)], ids=str)
def test_dot_with_accumulator(interpret, shape):
    M, N, K = shape
    rng = np.random.default_rng(11)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c = rng.standard_normal((M, N)).astype(np.float32)
    d = np.zeros((M, N), np.float32)
    e = np.zeros((M, N), np.float32)
    launch(dot_kernel, interpret, (1,), a, b, c, d, e, M=M, N=N, K=K)
    ab = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(d, ab + c, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(e, 2 * ab, rtol=1e-5, atol=1e-4)


@kdsl.jit
def dot_nt_kernel(a_ptr, w_ptr, c_ptr, stride_w, M: kl.constexpr, N: kl.constexpr,
                  K: kl.constexpr):
    """c = a @ w.T with w stored [N, K] (a linear layer's weight): both operands run
    contiguously along K, the case a CPU back end computes as vector products along K."""
    rm = kl.arange(0, M)
    rn = kl.arange(0, N)
    rk = kl.arange(0, K)
    a = kl.load(a_ptr + rm[:, None] * K + rk[None, :])
    w_t = kl.load(w_ptr + rn[None, :] * stride_w + rk[:, None])
    kl.store(c_ptr + rm[:, None] * N + rn[None, :], kl.dot(a, w_t, kl.full((M, N), 1.0, kl.float32)))


@both_backends
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", [(8, 8, 64), (4, 8, 128), (2, 4, 256)], ids=str)
def test_dot_of_operands_contiguous_along_k(interpret, dtype, shape):
    M, N, K = shape
    rng = np.random.default_rng(12)
    a = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((N, K + 3)).astype(dtype)        # padded rows: a strided view
    c = np.zeros((M, N), np.float32)
    launch(dot_nt_kernel, interpret, (1,), a, w, c, K + 3, M=M, N=N, K=K, num_threads=1)
    expected = a.astype(np.float64) @ w[:, :K].astype(np.float64).T + 1.0
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-4)


@kdsl.jit
def int_dot_kernel(a_ptr, b_ptr, c_ptr, M: kl.constexpr, N: kl.constexpr, K: kl.constexpr):
    rm = kl.arange(0, M)
    rn = kl.arange(0, N)
    rk = kl.arange(0, K)
    a = kl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = kl.load(b_ptr + rk[:, None] * N + rn[None, :])
    kl.store(c_ptr + rm[:, None] * N + rn[None, :], kl.dot(a, b, kl.full((M, N), 7, kl.int32)))


INT_DOT_DTYPES = [np.int8, np.uint8, np.int16, np.int32]


@both_backends
@settings(max_examples=12, deadline=None)         # each draw compiles
@given(m=st.sampled_from((1, 2, 8)), n=st.sampled_from((1, 2, 8)),
       k=st.sampled_from((8, 16, 32, 64)), a_dtype=st.sampled_from(INT_DOT_DTYPES),
       b_dtype=st.sampled_from(INT_DOT_DTYPES), seed=st.integers(0, 2**16))
@example(m=8, n=1, k=32, a_dtype=np.uint8, b_dtype=np.int16, seed=1)     # the FP4 GEMV's dot
@example(m=2, n=2, k=16, a_dtype=np.int16, b_dtype=np.int16, seed=2)
def test_integer_dot_is_exact(interpret, m, n, k, a_dtype, b_dtype, seed):
    # int32 accumulation, whatever the back end does with 8- and 16-bit operands (on
    # PoCL x86 they become pmaddwd pair sums): values over each type's whole range,
    # the extremes included; the sum of products wraps modulo 2**32 as C's int does
    rng = np.random.default_rng(seed)

    def draw(shape, dtype):
        info = np.iinfo(dtype)
        lo, hi = (max(info.min, -2**20), min(info.max, 2**20)) if dtype == np.int32 else \
            (info.min, info.max)
        v = rng.integers(lo, hi, shape, endpoint=True)
        v.flat[0] = hi
        return v.astype(dtype)

    a, b = draw((m, k), a_dtype), draw((k, n), b_dtype)
    c = np.zeros((m, n), np.int32)
    launch(int_dot_kernel, interpret, (1,), kdsl.tensor(a, dtype=a_dtype),
           kdsl.tensor(b, dtype=b_dtype), c, M=m, N=n, K=k, num_threads=1)
    expected = (a.astype(np.int64) @ b.astype(np.int64) + 7 + 2**31) % 2**32 - 2**31
    np.testing.assert_array_equal(c, expected.astype(np.int32))


@kdsl.jit
def int16_gemv_kernel(a_ptr, b_ptr, c_ptr, M: kl.constexpr, K: kl.constexpr):
    rm = kl.arange(0, M)
    rk = kl.arange(0, K)
    a = kl.load(a_ptr + rm[:, None] * K + rk[None, :])
    b = kl.load(b_ptr + rk)
    kl.store(c_ptr + rm, kl.sum(kl.dot(a, b[:, None]), axis=1))


def test_integer_dot_uses_pair_products_where_the_device_has_them():
    # on PoCL x86 (AVX2) the 16-bit dot is one pmaddwd per 16 products; elsewhere plain C
    from kdsl.device_features import has_int16_pair_dot
    dev = kdsl.current_device()
    a = kdsl.tensor(np.ones((8, 32), np.int16), dtype=np.int16)
    b = kdsl.tensor(np.full(32, 3, np.int16), dtype=np.int16)
    c = kdsl.empty((8,), dtype=np.int32)
    int16_gemv_kernel[(1,)](a, b, c, M=8, K=32, num_threads=1)
    np.testing.assert_array_equal(c.numpy(), np.full(8, 32 * 3))
    (compiled,) = int16_gemv_kernel._compiled.values()
    source = compiled.source
    assert ("__builtin_ia32_pmaddwd256" in source) == has_int16_pair_dot(dev)


# ------------------------------------------------------------- control flow
@kdsl.jit
def control_kernel(out_ptr, n, start, step):
    """Scalar control flow: for/while/if/elif/else, break, continue, tuple assignment."""
    total = 0
    for i in range(start, n, step):
        if i % 3 == 0:
            continue
        if i > 40:
            break
        total += i
    kl.store(out_ptr + 0, total)
    count = 0
    v = n
    while v > 1:
        v = v // 2
        count += 1
    kl.store(out_ptr + 1, count)
    if n < 10:
        size_class = 1
    elif n < 100:
        size_class = 2
    else:
        size_class = 3
    kl.store(out_ptr + 2, size_class)
    kl.store(out_ptr + 3, n if n % 2 == 0 else -n)
    pairs = 0
    for i in range(n):
        for j in range(n):
            if j > i:
                break
            pairs += 1
    kl.store(out_ptr + 4, pairs)
    a = 1
    b = 2
    for _ in range(n % 5):
        a, b = b, a + b
    kl.store(out_ptr + 5, a * 1000 + b)
    w = 0
    while True:
        w += 3
        if w >= n:
            break
    kl.store(out_ptr + 6, w)


def control_reference(n, start, step):
    total = 0
    for i in range(start, n, step):
        if i % 3 == 0:
            continue
        if i > 40:
            break
        total += i
    count, v = 0, n
    while v > 1:
        v //= 2          # n >= 0 here, so Python's // is C's
        count += 1
    size_class = 1 if n < 10 else 2 if n < 100 else 3
    pairs = sum(min(i + 1, n) for i in range(n))
    a, b = 1, 2
    for _ in range(n % 5):
        a, b = b, a + b
    w = 0
    while True:
        w += 3
        if w >= n:
            break
    return [total, count, size_class, n if n % 2 == 0 else -n, pairs, a * 1000 + b, w]


@both_backends
@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 120), start=st.integers(-5, 20), step=st.integers(1, 4))
def test_scalar_control_flow(interpret, n, start, step):
    out = np.full(7, -99, np.int32)
    launch(control_kernel, interpret, (1,), out, n, start, step)
    np.testing.assert_array_equal(out, control_reference(n, start, step))


@kdsl.jit
def countdown_kernel(out_ptr, n):
    k = 0
    for i in range(n, 0, -2):
        kl.store(out_ptr + k, i)
        k += 1


@both_backends
def test_range_with_negative_step(interpret):
    out = np.zeros(8, np.int32)
    launch(countdown_kernel, interpret, (1,), out, 9)
    np.testing.assert_array_equal(out, [9, 7, 5, 3, 1, 0, 0, 0])


@kdsl.jit
def static_range_kernel(x_ptr, out_ptr, BLOCK: kl.constexpr, CHUNKS: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    acc = kl.zeros((BLOCK,), kl.float32)
    for c in kl.static_range(CHUNKS):
        if c % 2 == 0:                   # decided at compile time
            acc += kl.load(x_ptr + c * BLOCK + offs) * (c + 1)
        else:
            acc -= kl.load(x_ptr + c * BLOCK + offs)
    kl.store(out_ptr + offs, acc)
    s = 0
    for c in kl.static_range(1, 10, 3):
        s += c * c
    kl.store(out_ptr + BLOCK, s * 1.0)


@both_backends
def test_static_range(interpret):
    BLOCK, CHUNKS = 16, 5
    x = np.random.default_rng(12).standard_normal(BLOCK * CHUNKS).astype(np.float32)
    out = np.zeros(BLOCK + 1, np.float32)
    launch(static_range_kernel, interpret, (1,), x, out, BLOCK=BLOCK, CHUNKS=CHUNKS)
    chunks = x.reshape(CHUNKS, BLOCK)
    expected = sum(chunks[c] * (c + 1) if c % 2 == 0 else -chunks[c] for c in range(CHUNKS))
    np.testing.assert_allclose(out[:BLOCK], expected, rtol=1e-6, atol=1e-6)
    assert out[BLOCK] == 1 + 16 + 49


# ------------------------------------------------------------- helpers, constants
@kdsl.jit
def low_high(a, b, scale):
    """A helper returning a tuple."""
    low = kl.minimum(a, b) * scale
    high = kl.maximum(a, b) * scale
    return low, high


@kdsl.jit
def square(v):
    return v * v


@kdsl.jit
def shifted_square(v, SHIFT: kl.constexpr = OFFSET):
    return square(v + SHIFT)           # a helper calling a helper


@kdsl.jit
def helper_kernel(x_ptr, y_ptr, low_ptr, high_ptr, sq_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    y = kl.load(y_ptr + offs)
    low, high = low_high(x, y, SCALE)
    kl.store(low_ptr + offs, low)
    kl.store(high_ptr + offs, square(high))
    kl.store(sq_ptr + offs, shifted_square(x) + shifted_square(y, SHIFT=2.0))


@both_backends
def test_inlined_helpers_and_module_constants(interpret):
    BLOCK = 32
    rng = np.random.default_rng(13)
    x = rng.standard_normal(BLOCK).astype(np.float32)
    y = rng.standard_normal(BLOCK).astype(np.float32)
    low, high, sq = (np.zeros(BLOCK, np.float32) for _ in range(3))
    launch(helper_kernel, interpret, (1,), x, y, low, high, sq, BLOCK=BLOCK)
    np.testing.assert_allclose(low, np.minimum(x, y) * SCALE, rtol=1e-6)
    np.testing.assert_allclose(high, (np.maximum(x, y) * SCALE) ** 2, rtol=1e-6)
    np.testing.assert_allclose(sq, (x + OFFSET) ** 2 + (y + 2.0) ** 2, rtol=1e-6)


@kdsl.jit
def infinity_kernel(x_ptr, out_ptr, n, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask, other=float("inf"))
    kl.store(out_ptr + 0, kl.min(x, axis=0))
    kl.store(out_ptr + 1, kl.max(kl.where(mask, x, -BIG), axis=0))
    kl.store(out_ptr + 2, float("inf"))
    kl.store(out_ptr + 3, -BIG)
    m = -float("inf")
    for i in range(n):
        m = kl.maximum(m, kl.load(x_ptr + i))
    kl.store(out_ptr + 4, m)


@both_backends
def test_float_inf(interpret):
    x = np.array([3.0, -1.0, 8.0, 2.0, 100.0, -100.0, 0.0, 0.0], np.float32)
    out = np.zeros(5, np.float32)
    launch(infinity_kernel, interpret, (1,), x, out, 4, BLOCK=8)
    np.testing.assert_array_equal(out[:3], [-1.0, 8.0, np.inf])
    assert out[3] == -np.inf
    assert out[4] == 8.0
    out = np.zeros(5, np.float32)
    launch(infinity_kernel, interpret, (1,), x, out, 0, BLOCK=8)
    assert out[0] == np.inf and out[1] == -np.inf and out[4] == -np.inf


@kdsl.jit
def documented_kernel(x_ptr, out_ptr, n, BLOCK: kl.constexpr):
    """A docstring is allowed.

    It spans lines, and it is not code.
    """
    # a comment line
    start = kl.multiple_of(kl.program_id(0) * BLOCK, BLOCK)   # a trailing comment
    offs = start + kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask); y = x * 2
    kl.store(out_ptr + offs, y, mask=mask)


@both_backends
def test_docstrings_comments_and_hints(interpret):
    n = 100
    x = np.arange(n, dtype=np.float32)
    out = np.zeros(n, np.float32)
    launch(documented_kernel, interpret, (kdsl.cdiv(n, 32),), x, out, n, BLOCK=32)
    np.testing.assert_array_equal(out, 2 * x)


# --------------------------------------------------------------- memory
@kdsl.jit
def copy_kernel(src_ptr, dst_ptr, n, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    mask = offs < n
    kl.store(dst_ptr + offs, kl.load(src_ptr + offs, mask=mask) + 1000, mask=mask)


@both_backends
def test_tensor_views_with_offsets(interpret):
    src = kdsl.tensor(np.arange(20, dtype=np.float32))
    dst = kdsl.zeros((20,), dtype=np.float32)
    launch(copy_kernel, interpret, (1,), src[3:], dst[5:], 8, BLOCK=8)
    expected = np.zeros(20, np.float32)
    expected[5:13] = np.arange(3, 11) + 1000
    np.testing.assert_array_equal(dst.numpy(), expected)
    # rows of a 2-D tensor: a row view and a range of rows
    grid = kdsl.tensor(np.arange(6 * 8, dtype=np.float32).reshape(6, 8))
    out = kdsl.zeros((3, 8), dtype=np.float32)
    launch(copy_kernel, interpret, (1,), grid[2], out[1], 8, BLOCK=8)
    launch(copy_kernel, interpret, (1,), grid[4:], out, 4, BLOCK=8)
    want = np.zeros((3, 8), np.float32)
    want[1] = np.arange(16, 24) + 1000
    want[0, :4] = np.arange(32, 36) + 1000
    np.testing.assert_array_equal(out.numpy(), want)


@kdsl.jit
def pointer_walk_kernel(x_ptr, out_ptr, n_chunks, BLOCK: kl.constexpr):
    """A block of pointers advanced in a loop, as Triton's matmul tutorial does."""
    offs = kl.arange(0, BLOCK)
    ptrs = x_ptr + offs
    acc = kl.zeros((BLOCK,), kl.float32)
    for i in range(n_chunks):
        acc += kl.load(ptrs) * (i + 1)
        ptrs += BLOCK
    kl.store(out_ptr + offs, acc)


@both_backends
def test_pointer_block_advanced_in_a_loop(interpret):
    BLOCK, chunks = 128, 3
    x = np.random.default_rng(15).standard_normal(BLOCK * chunks).astype(np.float32)
    out = np.zeros(BLOCK, np.float32)
    launch(pointer_walk_kernel, interpret, (1,), x, out, chunks, BLOCK=BLOCK)
    expected = sum(x.reshape(chunks, BLOCK)[i] * (i + 1) for i in range(chunks))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@kdsl.jit
def scalar_memory_kernel(x_ptr, out_ptr, n):
    pid = kl.program_id(0)
    v = kl.load(x_ptr + pid)
    first = kl.load(x_ptr)
    guarded = kl.load(x_ptr + pid + 1, mask=pid + 1 < n, other=-1.0)
    kl.store(out_ptr + pid, v * 2 + first)
    kl.store(out_ptr + n + pid, guarded)
    if pid == 0:
        kl.store(out_ptr + 2 * n, kl.load(x_ptr + n - 1))


@both_backends
def test_scalar_loads_and_stores(interpret):
    n = 7
    x = np.arange(1, n + 1, dtype=np.float32) * 1.5
    out = np.zeros(2 * n + 1, np.float32)
    launch(scalar_memory_kernel, interpret, (n,), x, out, n)
    np.testing.assert_array_equal(out[:n], x * 2 + x[0])
    np.testing.assert_array_equal(out[n:2 * n], np.append(x[1:], -1.0))
    assert out[2 * n] == x[-1]


@kdsl.jit
def grid_kernel(out_ptr):
    px = kl.program_id(0)
    py = kl.program_id(1)
    pz = kl.program_id(2)
    nx = kl.num_programs(0)
    ny = kl.num_programs(1)
    nz = kl.num_programs(2)
    base = ((pz * ny + py) * nx + px) * 6
    kl.store(out_ptr + base + 0, px)
    kl.store(out_ptr + base + 1, py)
    kl.store(out_ptr + base + 2, pz)
    kl.store(out_ptr + base + 3, nx)
    kl.store(out_ptr + base + 4, ny)
    kl.store(out_ptr + base + 5, nz)


@both_backends
@pytest.mark.parametrize("grid", [(7,), (5, 3), (3, 2, 4), (1, 1, 6)], ids=str)
def test_program_id_and_num_programs(interpret, grid):
    full = tuple(grid) + (1,) * (3 - len(grid))
    total = math.prod(full)
    out = np.full(total * 6, -1, np.int32)
    launch(grid_kernel, interpret, grid, out)
    z, y, x = np.meshgrid(range(full[2]), range(full[1]), range(full[0]), indexing="ij")
    expected = np.stack([x.ravel(), y.ravel(), z.ravel()] +
                        [np.full(total, g) for g in full], axis=1)
    np.testing.assert_array_equal(out.reshape(total, 6), expected)


@kdsl.jit
def tile_kernel(x_ptr, out_ptr, M, N, BM: kl.constexpr, BN: kl.constexpr):
    """Row sums and a transposed copy of a 2-D grid of tiles."""
    rows = kl.program_id(0) * BM + kl.arange(0, BM)
    cols = kl.program_id(1) * BN + kl.arange(0, BN)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    x = kl.load(x_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0)
    kl.store(out_ptr + cols[:, None] * M + rows[None, :], kl.trans(x) * 2,
             mask=(cols[:, None] < N) & (rows[None, :] < M))


@both_backends
@pytest.mark.parametrize("num_threads", [1, 8, 64, 256])
def test_num_threads_does_not_change_results(interpret, num_threads):
    M, N = 37, 21
    x = np.random.default_rng(14).standard_normal((M, N)).astype(np.float32)
    out = np.zeros((N, M), np.float32)
    launch(tile_kernel, interpret, (kdsl.cdiv(M, 16), kdsl.cdiv(N, 8)), x, out, M, N,
           BM=16, BN=8, num_threads=num_threads)
    np.testing.assert_array_equal(out, 2 * x.T)


# ------------------------------------------------------------- promotion
@kdsl.jit
def promotion_kernel(i_ptr, f_ptr, out_ptr, int_out_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    i = kl.load(i_ptr + offs)
    f = kl.load(f_ptr + offs)
    kl.store(out_ptr + offs, i * 0.5)              # int * float -> float32
    kl.store(out_ptr + BLOCK + offs, i / 4)        # int / int -> float32
    kl.store(out_ptr + 2 * BLOCK + offs, i + f)    # int + float -> float32
    kl.store(int_out_ptr + offs, i * 2 + 1)        # int * weak int stays int32
    n = kl.full((BLOCK,), 7, kl.int32)
    kl.store(int_out_ptr + BLOCK + offs, n - kl.zeros((BLOCK,), kl.int32) + offs)


@both_backends
def test_type_promotion(interpret):
    BLOCK = 16
    i = np.arange(-8, 8, dtype=np.int32) * 3
    f = np.linspace(-1, 1, BLOCK).astype(np.float32)
    out = np.zeros(3 * BLOCK, np.float32)
    int_out = np.zeros(2 * BLOCK, np.int32)
    launch(promotion_kernel, interpret, (1,), i, f, out, int_out, BLOCK=BLOCK)
    np.testing.assert_array_equal(out[:BLOCK], i * np.float32(0.5))
    np.testing.assert_array_equal(out[BLOCK:2 * BLOCK], i / np.float32(4))
    np.testing.assert_allclose(out[2 * BLOCK:], i + f, rtol=1e-7)
    np.testing.assert_array_equal(int_out[:BLOCK], i * 2 + 1)
    np.testing.assert_array_equal(int_out[BLOCK:], 7 + np.arange(BLOCK))


@kdsl.jit
def fmod(x_ptr, out_ptr, n, float4, BLOCK: kl.constexpr):
    """Named like an OpenCL builtin, with a parameter and variables named like C words."""
    sin = kl.arange(0, BLOCK)
    half = sin < n
    as_float = kl.load(x_ptr + sin, mask=half)
    kernel = kl.exp(as_float * float4)
    kl.store(out_ptr + sin, kernel, mask=half)


@pytest.mark.parametrize("interpret", [False, True])
def test_names_that_collide_with_opencl_c(interpret):
    x = np.linspace(-1, 1, 10).astype(np.float32)
    out = kdsl.empty((10,))
    fn = kdsl.jit(fmod.fn, interpret=True) if interpret else fmod
    fn[(1,)](kdsl.tensor(x), out, 10, 0.5, BLOCK=16)
    np.testing.assert_allclose(out.numpy(), np.exp(x * 0.5), rtol=1e-6)


@kdsl.jit
def half_rows_sum(x_ptr, out_ptr, stride, BLOCK: kl.constexpr):
    """Sum of an fp16 row read with a runtime stride (1: contiguous, vector loads)."""
    row = kl.program_id(0)
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + row * BLOCK * stride + offs * stride)
    kl.store(out_ptr + row, kl.sum(x, axis=0))


@pytest.mark.parametrize("stride", [1, 2])
def test_contiguous_fp16_loads_become_vector_loads(stride):
    from kdsl.launch import compile_kernel
    x = np.random.default_rng(0).standard_normal((3, 32 * stride)).astype(np.float16)
    out = kdsl.empty((3,))
    args = (kdsl.tensor(x), out, stride)
    half_rows_sum[(3,)](*args, BLOCK=32, num_threads=1)
    np.testing.assert_allclose(out.numpy(), x[:, ::stride].astype(np.float32).sum(1), rtol=1e-3,
                               atol=1e-3)
    values, threads = half_rows_sum.bind(args, {"BLOCK": 32, "num_threads": 1})
    source = compile_kernel(half_rows_sum, values, threads).source
    assert ("vload_half8" in source) == (stride == 1)


@kdsl.jit
def multiply_adds(a_ptr, b_ptr, c_ptr, out_ptr, BLOCK: kl.constexpr):
    """Products written into sums (contracted) and one product used twice (not)."""
    offs = kl.arange(0, BLOCK)
    a = kl.load(a_ptr + offs)
    b = kl.load(b_ptr + offs)
    c = kl.load(c_ptr + offs)
    shared = a * c
    kl.store(out_ptr + offs, a * b + c)
    kl.store(out_ptr + BLOCK + offs, a * b - c)
    kl.store(out_ptr + 2 * BLOCK + offs, c - a * b)
    kl.store(out_ptr + 3 * BLOCK + offs, shared + b - shared * 2.0)


@both_backends
def test_products_contracted_into_sums(interpret):
    from kdsl.launch import compile_kernel
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(64).astype(np.float32) for _ in range(3))
    out = kdsl.empty((4 * 64,))
    args = (kdsl.tensor(a), kdsl.tensor(b), kdsl.tensor(c), out)
    launch(multiply_adds, interpret, (1,), *args, BLOCK=64, num_threads=2)
    want = np.concatenate([a * b + c, a * b - c, c - a * b, a * c + b - a * c * 2])
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    values, threads = multiply_adds.bind(args, {"BLOCK": 64, "num_threads": 2})
    source = compile_kernel(multiply_adds, values, threads).source
    # the device compiler fuses a * b + c only within one C expression
    assert " * " in source and any(" * " in line and (" + " in line or " - " in line)
                                   for line in source.splitlines())


@kdsl.jit
def dots_and_exps(a_ptr, b_ptr, out_ptr, R: kl.constexpr, C: kl.constexpr):
    """Row and column sums of a product (contracted into the sums) and an exp."""
    rows = kl.arange(0, R)
    cols = kl.arange(0, C)
    a = kl.load(a_ptr + rows[:, None] * C + cols[None, :])
    b = kl.load(b_ptr + cols)
    kl.store(out_ptr + rows, kl.sum(a * b[None, :], axis=1))
    kl.store(out_ptr + R + cols, kl.sum(a * b[None, :], axis=0))
    kl.store(out_ptr + R + C + cols, kl.exp(b))


@both_backends
@pytest.mark.parametrize("shape", [(16, 64), (2, 4)])
def test_summed_products_and_vector_math(interpret, shape):
    from kdsl.launch import compile_kernel
    R, C = shape
    rng = np.random.default_rng(1)
    a = rng.standard_normal((R, C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    out = kdsl.empty((R + 2 * C,))
    args = (kdsl.tensor(a), kdsl.tensor(b), out)
    launch(dots_and_exps, interpret, (1,), *args, R=R, C=C, num_threads=1)
    want = np.concatenate([a @ b, (a * b).sum(0), np.exp(b)])
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    if interpret or not kdsl.current_device().is_cpu:
        return
    values, threads = dots_and_exps.bind(args, {"R": R, "C": C, "num_threads": 1})
    source = compile_kernel(dots_and_exps, values, threads).source
    # products inline in the sums (one FMA each on the device), no product statements
    assert not any(line.strip().startswith("float binop") and " * " in line
                   for line in source.splitlines())
    # a CPU work-item with 8+ exps calls the 8-wide exp
    assert ("= exp((float8)(" in source) == (C >= 8)
    # 8+ row sums over 16+ columns fold 8 at a time (codegen _fold8)
    assert ("shuffle2(" in source) == (R >= 8 and C >= 16)


@kdsl.jit
def accumulate_into(total, x_ptr, n):
    """A helper that reassigns its parameter in a loop."""
    for i in range(0, n):
        total += kl.load(x_ptr + i)
    return total


@kdsl.jit
def helper_accumulates(x_ptr, out_ptr, n):
    kl.store(out_ptr, accumulate_into(kl.load(out_ptr) * 2.0, x_ptr, n))


@both_backends
def test_helper_parameter_reassigned_in_loop(interpret):
    x = kdsl.tensor(np.arange(5, dtype=np.float32))
    out = kdsl.tensor(np.array([1.0], np.float32))
    launch(helper_accumulates, interpret, (1,), x, out, 5)
    assert out.numpy()[0] == 12.0


@kdsl.jit
def running_max_of(m, x_ptr, n, BLOCK: kl.constexpr):
    """A helper whose parameter is assigned once, in a loop: a loop-carried variable."""
    for start in range(0, n, BLOCK):
        m = kl.maximum(m, kl.load(x_ptr + start + kl.arange(0, BLOCK)))
    return m


@kdsl.jit
def scalar_max_of(m, x_ptr, n):
    for i in range(0, n):
        m = kl.maximum(m, kl.load(x_ptr + i))
    return m


@kdsl.jit
def running_max_kernel(x_ptr, out_ptr, n, scale, BLOCK: kl.constexpr):
    m = running_max_of(kl.full((BLOCK,), -1.0e30, kl.float32), x_ptr, n, BLOCK)
    kl.store(out_ptr + kl.arange(0, BLOCK), m)
    # a Python number for the parameter, and a kernel parameter assigned in a loop
    kl.store(out_ptr + BLOCK, scalar_max_of(0.0, x_ptr, n))
    for i in range(0, 3):
        scale = scale * 2.0
    kl.store(out_ptr + BLOCK + 1 + kl.arange(0, 1), kl.zeros((1,), kl.float32) + scale)


@both_backends
@pytest.mark.parametrize("num_threads", [1, 4])
def test_parameter_assigned_once_in_a_loop_carries_its_value(interpret, num_threads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(64).astype(np.float32) - 3.0
    out = kdsl.empty((10,))
    launch(running_max_kernel, interpret, (1,), kdsl.tensor(x), out, 64, 1.5, BLOCK=8,
           num_threads=num_threads)
    got = out.numpy()
    np.testing.assert_array_equal(got[:8], x.reshape(8, 8).max(axis=0))
    assert got[8] == max(0.0, x.max())
    assert got[9] == 12.0


@kdsl.jit
def vector_arith_kernel(x_ptr, y_ptr, out_ptr, N: kl.constexpr):
    """Float arithmetic, fma, min/max/abs, float-bit integer ops and where on a
    float compare: the ops a one-work-item CPU kernel writes 8 slots at a time."""
    i = kl.arange(0, N)
    x = kl.load(x_ptr + i)
    y = kl.load(y_ptr + i)
    bits = ((x.to(kl.int32, bitcast=True) & 0x7FFFFFFF) + 1) >> 1
    outs = [x + y, x - y, x * y, x / y, kl.fma(x, y, 0.5), kl.maximum(x, y), kl.minimum(x, y),
            kl.abs(x), bits.to(kl.float32, bitcast=True), kl.where(x < y, x * 2.0, y - 1.0),
            x * y + 3.0, 1.0 - x * y]
    for k in kl.static_range(0, 12):
        kl.store(out_ptr + k * N + i, outs[k])


@both_backends
@settings(max_examples=6, deadline=None)
@given(n=st.sampled_from((4, 8, 16, 64)), seed=st.integers(0, 2**16),
       specials=st.booleans())
@example(n=64, seed=1, specials=True)
def test_vector_arithmetic_matches_numpy(interpret, n, seed, specials):
    # 8-slot vector expressions (n >= 8 on a CPU) compute what per-slot code
    # (n = 4) does: IEEE results, inf and nan included
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    if specials:
        x[:4] = [np.inf, -np.inf, np.nan, 0.0]
        y[:4] = [0.0, np.nan, -np.inf, 1.0]
    out = kdsl.empty((12 * n,))
    launch(vector_arith_kernel, interpret, (1,), kdsl.tensor(x), kdsl.tensor(y), out, N=n,
           num_threads=1)
    with np.errstate(all="ignore"):
        bits = ((x.view(np.int32) & 0x7FFFFFFF) + 1) >> 1
        a, b = x.astype(np.float64), y.astype(np.float64)     # fused or not, within an ulp
        want = [a + b, a - b, a * b, a / b, a * b + 0.5, np.fmax(a, b), np.fmin(a, b),
                np.abs(a), bits.astype(np.int32).view(np.float32),
                np.where(a < b, a * 2, b - 1), a * b + 3, 1 - a * b]
    got = out.numpy().reshape(12, n)
    for k, w in enumerate(want):
        np.testing.assert_allclose(got[k], w.astype(np.float32), rtol=2e-6, atol=1e-6,
                                   equal_nan=True, err_msg=f"output {k}")
    if not interpret and kdsl.current_device().is_cpu and n >= 8:
        from kdsl.launch import compile_kernel
        values, threads = vector_arith_kernel.bind(
            (kdsl.tensor(x), kdsl.tensor(y), out), {"N": n, "num_threads": 1})
        source = compile_kernel(vector_arith_kernel, values, threads).source
        assert "const float8 " in source and "as_int8(" in source and "select(" in source


@kdsl.jit
def dot_accumulate_kernel(a_ptr, b_ptr, c_ptr, M: kl.constexpr, N: kl.constexpr,
                          K: kl.constexpr):
    rm = kl.arange(0, M)
    rn = kl.arange(0, N)
    rk = kl.arange(0, K)
    acc = kl.full((M, N), 1.0, kl.float32)
    for _ in range(0, 2):
        acc += kl.dot(kl.load(a_ptr + rm[:, None] * K + rk[None, :]),
                      kl.load(b_ptr + rk[:, None] * N + rn[None, :]))
    kl.store(c_ptr + rm[:, None] * N + rn[None, :], acc)


@both_backends
def test_dot_accumulated_by_add(interpret):
    # `acc += kl.dot(a, b)` (the tutorial's form): on a CPU the add stays per slot
    # (float8 values built from the dot's accumulators kept PoCL from vectorising
    # the dot's FMAs: M = 16 GEMMs ran 7x slower)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 16)).astype(np.float32)
    b = rng.standard_normal((16, 8)).astype(np.float32)
    c = kdsl.empty((8, 8))
    launch(dot_accumulate_kernel, interpret, (1,), kdsl.tensor(a), kdsl.tensor(b), c,
           M=8, N=8, K=16, num_threads=1)
    np.testing.assert_allclose(c.numpy(), 1.0 + 2 * (a @ b), rtol=1e-5, atol=1e-5)
    if not interpret and kdsl.current_device().is_cpu:
        from kdsl.launch import compile_kernel
        values, threads = dot_accumulate_kernel.bind(
            (kdsl.tensor(a), kdsl.tensor(b), c), {"M": 8, "N": 8, "K": 16, "num_threads": 1})
        assert "float8" not in compile_kernel(dot_accumulate_kernel, values, threads).source
