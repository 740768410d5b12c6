"""kl.dot with its operands staged in local memory (the GPU code path), run on whatever
device this machine has: the code generator is told to stage (`dot_staging="local"`)
as it does for a GPU, and the matmul and attention kernels are checked against numpy,
for dots that take the float4 walk (K slices of multiples of 4, micro-tiles of 4 x 4)
and ones that do not."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import kdsl
import kdsl.launch
from kdsl_kernels import attention, matmul
from kdsl_kernels.attention import attention_kernel
from kdsl_kernels.matmul import matmul_kernel


@pytest.fixture
def staged(monkeypatch):
    """Compile kernels as for a GPU (dot operands through local memory) for this test."""
    generate = kdsl.launch.generate

    def staged_generate(kernel_ir, info):
        return generate(kernel_ir, dict(info, dot_staging="local"))
    monkeypatch.setattr(kdsl.launch, "generate", staged_generate)
    for fn in (matmul_kernel, attention_kernel):
        monkeypatch.setattr(fn, "_compiled", {})     # not the in-process CPU builds
    yield
    for fn in (matmul_kernel, attention_kernel):
        fn._compiled.clear()                          # nor these builds after the test


# 16 work-items: 4 x 4 micro-tiles, read 4 k-steps per float4 where BK allows;
# 64: 2 x 2, read one k-step at a time
@pytest.mark.parametrize("bk, threads", [(4, 16), (8, 16), (2, 16), (8, 64)])
@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 70), n=st.integers(1, 70), k=st.integers(1, 70),
       seed=st.integers(0, 2**16))
def test_matmul_with_staged_operands(staged, bk, threads, m, n, k, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    cfg = {"BM": 16, "BN": 16, "BK": bk, "num_threads": threads, "pack_b": False}
    out = matmul(a, b, config=cfg).numpy()
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("S, T, D, group", [(37, 37, 64, 1), (5, 40, 32, 2), (1, 19, 16, 4)])
def test_attention_with_staged_operands(staged, S, T, D, group):
    rng = np.random.default_rng(S * T)
    H, KVH = 2 * group, 2
    q = rng.standard_normal((H, S, D)).astype(np.float32)
    k = rng.standard_normal((KVH, T, D)).astype(np.float32)
    v = rng.standard_normal((KVH, T, D)).astype(np.float32)
    cfg = {"BM": 16, "BN": 16, "BK": 8, "BD": D, "num_threads": 16, "acc_in_memory": False,
           "splits": 1}
    out = attention(q, k, v, causal=True, config=cfg).numpy()
    kk, vv = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
    s = q @ kk.transpose(0, 2, 1) / np.sqrt(D)
    s = np.where(np.arange(T)[None, :] > T - S + np.arange(S)[:, None], -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ vv
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
