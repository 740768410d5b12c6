"""kdsl_kernels.argmax against numpy.argmax, on the device and in the interpreter: rows
shorter and longer than a block, ties (the first index wins), -inf, views."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kdsl
from kdsl_kernels import argmax

MODES = pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])


def _run(interpret, fn):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSL_INTERPRET", "1" if interpret else "0")
        return fn()


@MODES
@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 5), n=st.integers(1, 300), levels=st.sampled_from([0, 3]),
       config=st.sampled_from([None, {"BLOCK": 16, "num_threads": 4},
                               {"BLOCK": 8, "num_threads": 1}]),
       seed=st.integers(0, 2**16))
def test_argmax_matches_numpy(interpret, rows, n, levels, config, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    if levels:                       # few distinct values: ties everywhere
        x = np.round(x * levels / 3).astype(np.float32)
    got = _run(interpret, lambda: argmax(x, config=config).numpy())
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1).astype(np.int32))


@MODES
def test_argmax_of_infinities_and_into_a_view(interpret):
    x = np.full((3, 70), -np.inf, np.float32)
    x[1, 69] = np.inf
    x[2, [5, 40]] = 2.0
    ids = kdsl.tensor(np.full(8, -1, np.int32))
    _run(interpret, lambda: argmax(kdsl.tensor(x), out=ids[2:5]))
    np.testing.assert_array_equal(ids.numpy(), [-1, -1, 0, 69, 5, -1, -1, -1])
    one_d = _run(interpret, lambda: argmax(np.array([1.0, 7.0, 7.0], np.float32)).numpy())
    np.testing.assert_array_equal(one_d, [1])


def test_bad_input_names_the_cause():
    with pytest.raises(ValueError, match="non-empty last axis"):
        argmax(kdsl.empty((2, 0)))
    with pytest.raises(ValueError, match="out must be a contiguous int32"):
        argmax(kdsl.empty((2, 5)), out=kdsl.empty((2,)))
