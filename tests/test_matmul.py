"""kdsl_kernels.matmul against numpy, on the device and in the interpreter."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kdsl
from kdsl_kernels.matmul import matmul

SMALL = {"BM": 8, "BN": 8, "BK": 8, "num_threads": 8}     # quick to compile
PACKED = {"BM": 4, "BN": 16, "BK": 16, "num_threads": 1, "pack_b": True}   # the CPU's M >= 32


def _ref(a, b, trans_b, bias=None):
    out = a.astype(np.float32) @ (b.T if trans_b else b).astype(np.float32)
    return out + bias if bias is not None else out


@settings(max_examples=18, deadline=None)     # each draw compiles; CI builds cold
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 40),
       trans_b=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_matches_numpy(m, n, k, trans_b, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    config = SMALL if m > 1 else {"BN": 8, "BK": 8, "num_threads": 8}
    out = matmul(a, b, trans_b=trans_b, config=config).numpy()
    np.testing.assert_allclose(out, _ref(a, b, trans_b), rtol=1e-4, atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 150), bn=st.sampled_from((1, 2, 4)),
       runs=st.sampled_from(({"T": 1}, {"T": 3}, {"per_cu": 1}, {"per_cu": 4})),
       trans_b=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_gemv_runs_of_rows_match_numpy(n, k, bn, runs, trans_b, bias, seed):
    # M = 1: blocks of bn rows, T of them per program in turn (or per_cu programs per
    # compute unit), the last program's blocks partly or wholly past N
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((1, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    c = rng.standard_normal(n).astype(np.float32) if bias else None
    config = dict({"BN": bn, "BK": 64, "num_threads": 1}, **runs)
    out = matmul(a, b, trans_b=trans_b, bias=c, config=config).numpy()
    np.testing.assert_allclose(out, _ref(a, b, trans_b, c), rtol=1e-4, atol=1e-4)


def test_gemv_runs_of_rows_in_interpreter(monkeypatch):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 70)).astype(np.float32)
    b = rng.standard_normal((45, 70)).astype(np.float32)
    out = matmul(a, b, trans_b=True, config={"BN": 2, "BK": 16, "num_threads": 1, "T": 4})
    np.testing.assert_allclose(out.numpy(), _ref(a, b, True), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,n,k", [(1, 300, 130), (300, 7, 33), (64, 64, 64), (129, 257, 65)])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_default_config(m, n, k, trans_b):
    rng = np.random.default_rng(m * n + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out = matmul(kdsl.tensor(a), kdsl.tensor(b), trans_b=trans_b, bias=kdsl.tensor(bias))
    np.testing.assert_allclose(out.numpy(), _ref(a, b, trans_b, bias), rtol=1e-4, atol=1e-3)


@settings(max_examples=14, deadline=None)     # each draw compiles; CI builds cold
@given(m=st.integers(1, 24), n=st.integers(1, 24), k=st.integers(1, 24),
       pads=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)),
       trans_b=st.booleans(), transposed_view=st.booleans(), seed=st.integers(0, 2**16))
def test_strided_views_match_numpy(m, n, k, pads, trans_b, transposed_view, seed):
    """Operands that are views into wider tensors (rows with padding, a transposed
    weight) and an output view: the strides are honoured, not assumed."""
    rng = np.random.default_rng(seed)
    pad_a, pad_b, pad_out = pads
    a_wide = rng.standard_normal((m, k + pad_a)).astype(np.float32)
    b_rows, b_cols = (n, k) if trans_b else (k, n)
    b_wide = rng.standard_normal((b_rows, b_cols + pad_b)).astype(np.float32)
    a = kdsl.tensor(a_wide)[:, :k]
    b = kdsl.tensor(b_wide)[:, :b_cols]
    b_np = b_wide[:, :b_cols]
    if transposed_view:           # the same product from b's transpose, the other layout
        b, b_np, trans_b = b.transpose(0, 1), b_np.T, not trans_b
    out_wide = kdsl.zeros((m, n + pad_out))
    out = out_wide[:, :n]
    config = SMALL if m > 1 else None
    matmul(a, b, trans_b=trans_b, out=out, config=config)
    got = out_wide.numpy()
    np.testing.assert_allclose(got[:, :n], _ref(a_wide[:, :k], b_np, trans_b),
                               rtol=1e-4, atol=1e-4)
    assert not got[:, n:].any()                           # nothing written past the view


@settings(max_examples=12, deadline=None)     # each draw compiles; CI builds cold
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 70), batch=st.integers(1, 3),
       shared_b=st.booleans(), trans_b=st.booleans(), fp16=st.booleans(), bias=st.booleans(),
       tile=st.sampled_from([(4, 16, 16), (2, 8, 8), (8, 8, 32)]), seed=st.integers(0, 2**16))
def test_packed_b_matches_numpy(m, n, k, batch, shared_b, trans_b, fp16, bias, tile, seed):
    # pack_b: B (either layout, fp32 or fp16, per batch or shared) copied into zero-padded
    # panels, then the GEMM; M, N, K tails of every tile, and the EVEN path
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, m, k)).astype(np.float32)
    b_shape = (n, k) if trans_b else (k, n)
    b = rng.standard_normal(b_shape if shared_b else (batch,) + b_shape)
    b = b.astype(np.float16 if fp16 else np.float32)
    c = rng.standard_normal(n).astype(np.float32) if bias else None
    config = dict(PACKED, BM=tile[0], BN=tile[1], BK=tile[2])
    out = matmul(a, b, trans_b=trans_b, bias=c, config=config).numpy()
    ref = a @ (np.swapaxes(b, -1, -2) if trans_b else b).astype(np.float32)
    np.testing.assert_allclose(out, ref + (c if bias else 0), rtol=1e-4, atol=1e-4)


def test_packed_b_in_interpreter(monkeypatch):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    rng = np.random.default_rng(3)
    for m, n, k, trans_b in [(5, 9, 13, False), (8, 32, 32, True)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
        out = matmul(a, b, trans_b=trans_b, config=dict(PACKED, BM=4, BN=8, BK=8)).numpy()
        np.testing.assert_allclose(out, _ref(a, b, trans_b), rtol=1e-4, atol=1e-4)


def test_fp16_storage_and_batched():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 20, 24)).astype(np.float16)
    b = rng.standard_normal((3, 24, 17)).astype(np.float16)
    out = matmul(a, b, config=SMALL).numpy()
    np.testing.assert_allclose(out, a.astype(np.float32) @ b.astype(np.float32), rtol=1e-3,
                               atol=1e-3)
    w = rng.standard_normal((33, 24)).astype(np.float16)
    out = matmul(a[0], w, trans_b=True, config=SMALL).numpy()
    np.testing.assert_allclose(out, a[0].astype(np.float32) @ w.astype(np.float32).T,
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("m,n,k,trans_b", [(5, 9, 13, False), (1, 19, 21, True), (16, 8, 8, True)])
def test_matmul_in_interpreter(monkeypatch, m, n, k, trans_b):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    rng = np.random.default_rng(k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    config = SMALL if m > 1 else {"BN": 8, "BK": 8, "num_threads": 8}
    out = matmul(a, b, trans_b=trans_b, config=config).numpy()
    np.testing.assert_allclose(out, _ref(a, b, trans_b), rtol=1e-4, atol=1e-4)


def test_bad_shapes_name_the_cause():
    with pytest.raises(ValueError, match="inner dimensions"):
        matmul(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="bias"):
        matmul(np.zeros((2, 3), np.float32), np.zeros((3, 5), np.float32),
               bias=np.zeros(4, np.float32))


def test_empty_and_k_zero():
    assert matmul(np.zeros((0, 3), np.float32), np.zeros((3, 5), np.float32)).shape == (0, 5)
    out = matmul(np.zeros((2, 0), np.float32), np.zeros((0, 5), np.float32)).numpy()
    assert (out == 0).all()
