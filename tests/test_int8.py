"""kdsl_kernels.int8 (Q8_0-style weights) against numpy, on the device and in the interpreter."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

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


@MODES
@settings(max_examples=8, deadline=None)
@given(m=st.integers(1, 4), n=st.integers(1, 70), groups=st.integers(1, 5),
       config=st.sampled_from([None, {"BN": 1, "num_threads": 1}, {"BN": 4, "num_threads": 1},
                               {"BN": 8, "num_threads": 1}, {"ROWS": 3, "num_threads": 1},
                               {"ROWS": 16, "num_threads": 1}]),
       seed=st.integers(0, 2**16))
def test_linear_equals_x_times_dequantized_w(interpret, m, n, groups, config, seed):
    # row blocks (BN) and runs of consecutive rows (ROWS), N not a multiple of either
    rng = np.random.default_rng(seed)
    k = groups * 32
    packed = int8.quantize(rng.standard_normal((n, k)).astype(np.float32))
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = _run(interpret, lambda: int8.linear(x, packed, config=config).numpy())
    np.testing.assert_allclose(y, x @ int8.dequantize(packed).T, rtol=1e-5, atol=1e-4)


def test_linear_into_a_row_of_a_larger_output():
    rng = np.random.default_rng(3)
    packed = int8.quantize(rng.standard_normal((10, 64)).astype(np.float32))
    x = kdsl.tensor(rng.standard_normal((3, 64)).astype(np.float32))
    out = kdsl.zeros((4, 10))
    int8.linear(x[1:2], packed, out=out[2:3])
    expected = np.zeros((4, 10), np.float32)
    expected[2] = x.numpy()[1] @ int8.dequantize(packed).T
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_bad_input_names_the_cause():
    with pytest.raises(ValueError, match="multiple of 32"):
        int8.quantize(np.zeros((4, 40), np.float32))
    packed = int8.quantize(np.zeros((4, 64), np.float32))
    with pytest.raises(ValueError, match=r"x must be float32 \[M, 64\]"):
        int8.linear(np.zeros((1, 32), np.float32), packed)
    with pytest.raises(ValueError, match="scales must be float16"):
        int8.Int8Weight(packed.codes, packed.scales.astype(np.float32))
