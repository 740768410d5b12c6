"""kdsl_kernels.softmax against numpy, on the device and in the interpreter: rows that fit one
block and rows streamed over several, scale, causal mask, views."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import kdsl
from kdsl_kernels import softmax

MODES = pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])


def _run(interpret, fn):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSL_INTERPRET", "1" if interpret else "0")
        return fn()


def softmax_ref(x, scale, causal):
    x = x.astype(np.float64) * scale
    if causal:
        S, N = x.shape[-2:]
        hidden = np.arange(N)[None, :] > N - S + np.arange(S)[:, None]
        x = np.where(hidden, -np.inf, x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@MODES
@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=2), s=st.integers(1, 8),
       extra=st.integers(0, 300), causal=st.booleans(), scale=st.sampled_from([None, 0.125, -2.0]),
       config=st.sampled_from([None, {"BLOCK": 16, "num_threads": 4},
                               {"BLOCK": 16, "num_threads": 4, "form": "stored"},
                               {"BLOCK": 8, "num_threads": 1, "form": "stored"},
                               {"BLOCK": 8, "num_threads": 1, "form": "online"},
                               {"BLOCK": 8, "num_threads": 1, "form": "online", "exp": "poly"},
                               {"BLOCK": 16, "num_threads": 4, "exp": "poly"},
                               {"BLOCK": 16, "num_threads": 1, "form": "stored", "exp": "lib"}]),
       seed=st.integers(0, 2**16))
def test_softmax_matches_numpy(interpret, lead, s, extra, causal, scale, config, seed):
    # rows that fit a block and rows streamed in each form, with whole blocks
    # only (N a multiple of BLOCK: unmasked) or a partial last block
    shape = tuple(lead) + (s, s + extra)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    out = _run(interpret, lambda: softmax(x, scale=scale, causal=causal, config=config).numpy())
    np.testing.assert_allclose(out, softmax_ref(x, 1.0 if scale is None else scale, causal),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [64, 1024, 1025, 3000])
def test_long_rows_with_the_default_config(n):
    # rows past one block: the default streams them (on a CPU in 64-column
    # blocks of one work-item), causal and scaled
    x = np.random.default_rng(n).standard_normal((2, 3, n)).astype(np.float32)
    out = softmax(x, scale=0.5, causal=True).numpy()
    np.testing.assert_allclose(out, softmax_ref(x, 0.5, True), rtol=1e-5, atol=1e-6)


@MODES
@pytest.mark.parametrize("form", ["online", "stored"])
@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("exp", ["poly", "lib"])
def test_softmax_in_place_on_a_view_with_infinities(interpret, form, block, exp):
    # in place: the stored form's exps overwrite x's row before it is rescaled
    x = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32)
    x[:, 7] = -np.inf
    t = kdsl.tensor(x)
    view = t[:, 2:42]
    _run(interpret, lambda: softmax(view, out=view, config={"BLOCK": block, "num_threads": 4,
                                                            "form": form, "exp": exp}))
    expected = x.copy()
    expected[:, 2:42] = softmax_ref(x[:, 2:42], 1.0, False)
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("exp", ["poly", "lib"])
def test_a_nan_in_a_row_makes_the_row_nan(exp):
    # as numpy's softmax: the row maximum skips the nan, its exp must not
    x = np.random.default_rng(1).standard_normal((3, 200)).astype(np.float32)
    x[1, 77] = np.nan
    out = softmax(x, config={"BLOCK": 64, "num_threads": 1, "form": "stored", "exp": exp}).numpy()
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(out[[0, 2]], softmax_ref(x[[0, 2]], 1.0, False), rtol=1e-5,
                               atol=1e-6)


def test_bad_input_names_the_cause():
    with pytest.raises(ValueError, match="N >= S"):
        softmax(np.zeros((4, 3), np.float32), causal=True)
    with pytest.raises(ValueError, match="contiguous"):
        softmax(kdsl.tensor(np.zeros((4, 3), np.float32)).transpose(0, 1))
