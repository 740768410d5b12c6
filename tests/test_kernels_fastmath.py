"""kdsl_kernels.fastmath.exp_nonpositive against numpy's exp (float64), in ulps, on the
device and in the interpreter: the whole non-positive range, the edges and the specials."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import kdsl
import kdsl.language as kl
from kdsl_kernels.fastmath import exp_nonpositive

MODES = pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])
SMALLEST_NORMAL = np.finfo(np.float32).tiny


@kdsl.jit
def exp_kernel(x_ptr, y_ptr, n, EXP: kl.constexpr, BLOCK: kl.constexpr):
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs, mask=offs < n, other=0.0)
    kl.store(y_ptr + offs, exp_nonpositive(x, EXP), mask=offs < n)


def _exp(xs, interpret, exp="poly", block=64):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSL_INTERPRET", "1" if interpret else "0")
        x = kdsl.tensor(np.asarray(xs, np.float32))
        y = kdsl.empty(x.shape)
        exp_kernel[(kdsl.cdiv(len(xs), block),)](x, y, len(xs), EXP=exp, BLOCK=block)
        return y.numpy()


def _ulps(got, x):
    want = np.exp(x.astype(np.float64))
    return np.abs(got - want) / np.spacing(want.astype(np.float32))


@MODES
def test_within_one_ulp_over_the_normal_range(interpret):
    xs = np.concatenate([-np.geomspace(1e-9, 87.33, 20000), np.linspace(-87.33, 0.0, 20001)])
    xs = xs.astype(np.float32)
    got = _exp(xs, interpret)
    assert _ulps(got, xs).max() <= 1.02


@MODES
def test_specials_and_the_denormal_range(interpret):
    xs = np.array([0.0, -0.0, -np.inf, np.nan, -87.34, -100.0, -1e30, -np.finfo(np.float32).max],
                  np.float32)
    got = _exp(xs, interpret)
    assert got[0] == 1.0 and got[1] == 1.0
    assert got[2] == 0.0
    assert np.isnan(got[3])
    # below ln(smallest normal) e**x is a denormal: flushed to 0
    assert (got[4:] == 0.0).all()


@MODES
@given(xs=st.lists(st.floats(float(np.float32(-87.33)), 0.0, width=32), min_size=1, max_size=200),
       exp=st.sampled_from(["poly", "lib"]))
def test_matches_numpy_for_any_non_positive_block(interpret, xs, exp):
    # lengths that are not multiples of the block, and the device's own exp ("lib")
    xs = np.array(xs, np.float32)
    got = _exp(xs, interpret, exp)
    want = np.exp(xs.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=SMALLEST_NORMAL)
