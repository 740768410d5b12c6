"""kdsl_kernels rms_norm, add_rms_norm and layer_norm against numpy, on the device and in the
interpreter (rows shorter and longer than one block, fp16 weights, Gemma's 1 + w)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import kdsl
from kdsl_kernels import add_rms_norm, layer_norm, rms_norm

MODES = pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])
SMALL = {"BLOCK": 16, "num_threads": 4}     # rows longer than a block loop over it


def _run(interpret, fn):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSL_INTERPRET", "1" if interpret else "0")
        return fn()


def _rms_ref(x, w, eps, add_one):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * (1 + w if add_one else w)


@MODES
@given(m=st.integers(0, 6), n=st.integers(1, 300), add_one=st.booleans(), fp16=st.booleans(),
       small=st.booleans(), seed=st.integers(0, 2**16))
def test_rms_norm_and_fused_add(interpret, m, n, add_one, fp16, small, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, n)).astype(np.float32)
    r = rng.standard_normal((m, n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float16 if fp16 else np.float32)
    config = SMALL if small else None
    out = _run(interpret, lambda: rms_norm(x, w, 1e-6, add_one=add_one, config=config).numpy())
    np.testing.assert_allclose(out, _rms_ref(x, w.astype(np.float32), 1e-6, add_one),
                               rtol=1e-5, atol=1e-5)
    residual = kdsl.tensor(r)
    out = _run(interpret, lambda: add_rms_norm(x, residual, w, 1e-5, add_one=add_one,
                                               config=config).numpy())
    np.testing.assert_allclose(residual.numpy(), x + r, rtol=1e-6)
    np.testing.assert_allclose(out, _rms_ref(x + r, w.astype(np.float32), 1e-5, add_one),
                               rtol=1e-5, atol=1e-5)


@MODES
@given(m=st.integers(1, 5), n=st.integers(1, 300), bias=st.booleans(), small=st.booleans(),
       seed=st.integers(0, 2**16))
def test_layer_norm(interpret, m, n, bias, small, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, n)) * 3 + 5).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    out = _run(interpret, lambda: layer_norm(x, w, b, 1e-5, config=SMALL if small else None))
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(out.numpy(), ref + (b if bias else 0), rtol=1e-4, atol=1e-4)


@MODES
def test_rms_norm_on_a_row_view_in_place(interpret):
    rng = np.random.default_rng(3)
    buf = rng.standard_normal((4, 40)).astype(np.float32)
    t = kdsl.tensor(buf)
    view = t[1:3, 5:25]                         # rows 40 apart, 20 columns
    w = np.ones(20, np.float32)
    _run(interpret, lambda: rms_norm(view, w, 1e-6, out=view))
    expected = buf.copy()
    expected[1:3, 5:25] = _rms_ref(buf[1:3, 5:25], w, 1e-6, False)
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_bad_input_names_the_cause():
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"w must be a contiguous vector of shape \(8,\)"):
        rms_norm(x, np.zeros(7, np.float32), 1e-6)
    with pytest.raises(ValueError, match="2-D"):
        rms_norm(np.zeros(8, np.float32), np.zeros(8, np.float32), 1e-6)
    with pytest.raises(TypeError, match="updated in place"):
        add_rms_norm(x, x, np.zeros(8, np.float32), 1e-6)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        rms_norm(kdsl.tensor(np.zeros((8, 2), np.float32)).transpose(0, 1),
                 np.zeros(8, np.float32), 1e-6)
