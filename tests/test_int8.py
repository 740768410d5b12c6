"""kdsl_kernels.int8 (Q8_0-style weights) against numpy, on the device and in the interpreter."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import kdsl
from kdsl_kernels import int8

MODES = pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])


def _run(interpret, fn):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSL_INTERPRET", "1" if interpret else "0")
        return fn()


@given(n=st.integers(1, 40), groups=st.integers(1, 4), seed=st.integers(0, 2**16),
       zero_rows=st.booleans())
def test_round_trip_error_is_at_most_half_a_step(n, groups, seed, zero_rows):
    w = np.random.default_rng(seed).standard_normal((n, groups * 32)).astype(np.float32)
    if zero_rows:
        w[::2] = 0.0                       # an all-zero group gets scale 0, codes 0
    packed = int8.quantize(w)
    step = packed.scales.astype(np.float32).repeat(32, axis=1)
    assert np.all(np.abs(int8.dequantize(packed) - w) <= step / 2 + 1e-3 * np.abs(w) + 1e-7)
    assert packed.codes.min() >= -127


INT16 = [{"lanes": "int16", "per_cu": 1}, {"lanes": "int16", "T": 1}, {"lanes": "int16", "T": 3}]


def _int16_bound(x, w):
    """The most x @ w.T can move when each group of 32 of x is truncated to int16
    (each element by less than the group's max|x| / 32767)."""
    d = np.abs(x.reshape(x.shape[0], -1, 32)).max(axis=2) / 32767.0      # [m, groups]
    w_abs = np.abs(w.reshape(w.shape[0], -1, 32)).sum(axis=2)           # [n, groups]
    return d @ w_abs.T


@MODES
@settings(max_examples=8, deadline=None)
@given(m=st.integers(1, 4), n=st.integers(1, 70), groups=st.integers(1, 5),
       config=st.sampled_from([None, {"BN": 1, "num_threads": 1}, {"BN": 4, "num_threads": 1},
                               {"BN": 8, "num_threads": 1}, {"ROWS": 3, "num_threads": 1},
                               {"ROWS": 16, "num_threads": 1}] + INT16),
       seed=st.integers(0, 2**16))
@example(m=1, n=70, groups=5, config=INT16[0], seed=1)     # a part tile, one program per unit
@example(m=2, n=9, groups=2, config=INT16[2], seed=2)      # two rows of x, tiles past N
def test_linear_equals_x_times_dequantized_w(interpret, m, n, groups, config, seed):
    # row blocks (BN), runs of consecutive rows (ROWS) and the CPU's integer form over
    # 8-row tiles (int16 lanes: T tiles per program, or one program per compute unit),
    # N not a multiple of any of them
    device = kdsl.current_device()
    if config in INT16 and not device.is_cpu:
        config = None
    rng = np.random.default_rng(seed)
    k = groups * 32
    w = rng.standard_normal((n, k)).astype(np.float32)
    packed = int8.quantize(w)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = _run(interpret, lambda: int8.linear(x, packed, config=config).numpy())
    w_q = int8.dequantize(packed)
    used = config or int8._default_config(device, n)
    bound = _int16_bound(x, w_q) if used.get("lanes") == "int16" else 0.0
    np.testing.assert_array_less(np.abs(y - x @ w_q.T), bound + 1e-5 * np.abs(x @ w_q.T) + 1e-4)


def test_linear_into_a_row_of_a_larger_output():
    rng = np.random.default_rng(3)
    packed = int8.quantize(rng.standard_normal((10, 64)).astype(np.float32))
    x = kdsl.tensor(rng.standard_normal((3, 64)).astype(np.float32))
    out = kdsl.zeros((4, 10))
    int8.linear(x[1:2], packed, out=out[2:3])
    expected = np.zeros((4, 10), np.float32)
    expected[2] = x.numpy()[1] @ int8.dequantize(packed).T
    # the default config may take x as int16 (the CPU's integer form): within its bound
    bound = np.zeros((4, 10), np.float32)
    bound[2] = _int16_bound(x.numpy()[1:2], int8.dequantize(packed))[0]
    np.testing.assert_array_less(np.abs(out.numpy() - expected), bound + 1e-5)


def test_bad_input_names_the_cause():
    with pytest.raises(ValueError, match="multiple of 32"):
        int8.quantize(np.zeros((4, 40), np.float32))
    packed = int8.quantize(np.zeros((4, 64), np.float32))
    with pytest.raises(ValueError, match=r"x must be float32 \[M, 64\]"):
        int8.linear(np.zeros((1, 32), np.float32), packed)
    with pytest.raises(ValueError, match="scales must be float16"):
        int8.Int8Weight(packed.codes, packed.scales.astype(np.float32))
