"""kdsl_kernels.fp4_rope: decode's fused QKV GEMV + RoPE + KV-cache write against numpy
(x @ dequantize(W).T, then RoPE as transformers computes it), on the device and in the
interpreter, for the CPU byte-lane and the GPU word GEMV."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kdsl
from kdsl_kernels import fp4
from kdsl_kernels.fp4_kernels import word_gemv_default
from kdsl_kernels.fp4_rope import _rope_gemv_config, linear_rope_qkv, rope_fusable
from kdsl_kernels.rope import inv_freq

MODES = pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])
CONFIGS = {"bytes": {"BN": 8, "BK": 16, "lanes": "bytes", "num_threads": 1},
           "words": {"BN": 4, "BW": 32, "DEQ": "convert", "num_threads": 4}}


def _run(interpret, fn):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSL_INTERPRET", "1" if interpret else "0")
        return fn()


def rope_ref(x, position, base):
    """x [heads, D] rotated (rotate-half) at `position`, float64."""
    d = x.shape[-1]
    angle = np.float32(position) * inv_freq(base, d)
    cos, sin = np.cos(angle.astype(np.float64)), np.sin(angle.astype(np.float64))
    a, b = x[:, :d // 2].astype(np.float64), x[:, d // 2:].astype(np.float64)
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)


# (lanes, head_dim, bias, norm): each is a kernel specialisation to compile (about 20 s
# on PoCL), so two cover the flags; hypothesis varies the runtime values around them. The
# engine's tests run the rest (no bias with the norm, on the CPU path)
SPECIALISATIONS = [("bytes", 64, True, True), ("words", 32, False, False)]


@MODES
@settings(max_examples=8, deadline=None)
@given(spec=st.sampled_from(SPECIALISATIONS), heads=st.sampled_from([(1, 1), (4, 2), (3, 1)]),
       k_groups=st.integers(1, 3), position=st.integers(0, 700),
       outliers=st.sampled_from([0, 3]), seed=st.integers(0, 2**16))
def test_fused_qkv_rope_equals_linear_then_rope(interpret, spec, heads, k_groups, position,
                                                outliers, seed):
    lanes, head_dim, has_bias, norm = spec
    H, KVH = heads
    K = 64 * k_groups
    N = (H + 2 * KVH) * head_dim
    rng = np.random.default_rng(seed)
    packed = fp4.quantize(rng.standard_normal((N, K)).astype(np.float32), group_size=64,
                          outliers=outliers)
    x = rng.standard_normal((1, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if has_bias else None
    norm_w = rng.standard_normal(K).astype(np.float32)
    # what the kernel must compute: the GEMV's reference, then RoPE
    x_in = x * norm_w / np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-5) if norm else x
    y = (x_in.astype(np.float64) @ fp4.dequantize(packed).T.astype(np.float64))[0]
    if has_bias:
        y += bias
    q, k, v = np.split(y, [H * head_dim, (H + KVH) * head_dim])
    base = 1e4
    q_want = rope_ref(q.reshape(H, head_dim), position, base)
    k_want = rope_ref(k.reshape(KVH, head_dim), position, base)
    cfg = CONFIGS[lanes]
    assert rope_fusable(packed, head_dim, kdsl.current_device(), cfg) == (head_dim // 2 % cfg["BN"] == 0)
    if not rope_fusable(packed, head_dim, kdsl.current_device(), cfg):
        return
    # outputs: q [H, 1, D]; k and v slots of [KVH, T, D] caches, filled with 9 elsewhere
    q_out = kdsl.empty((H, 1, head_dim))
    caches = [kdsl.tensor(np.full((KVH, position + 3, head_dim), 9, np.float32)) for _ in "kv"]
    slots = [c[:, position:position + 1] for c in caches]
    _run(interpret, lambda: linear_rope_qkv(
        kdsl.tensor(x), packed, n_heads=H, n_kv_heads=KVH, head_dim=head_dim,
        position=position, base=base, q_out=q_out, k_out=slots[0], v_out=slots[1],
        bias=kdsl.tensor(bias) if has_bias else None,
        rms_norm=(kdsl.tensor(norm_w), 1e-5) if norm else None, config=cfg))
    scale = np.abs(y).max()
    np.testing.assert_allclose(q_out.numpy()[:, 0], q_want, atol=2e-5 * scale)
    for cache, want in zip(caches, (k_want, v.reshape(KVH, head_dim))):
        got = cache.numpy()
        np.testing.assert_allclose(got[:, position], want, atol=2e-5 * scale)
        rest = np.delete(got, position, axis=1)
        assert (rest == 9).all(), "a write outside the slot"


def test_bad_shapes_name_the_cause():
    packed = fp4.quantize(np.ones((6 * 16, 64), np.float32), group_size=64)
    x = kdsl.tensor(np.ones((1, 64), np.float32))
    q, kv = kdsl.empty((2, 1, 16)), kdsl.empty((2, 1, 16))
    with pytest.raises(ValueError, match="rows, not"):
        linear_rope_qkv(x, packed, n_heads=3, n_kv_heads=2, head_dim=16, position=0, base=1e4,
                        q_out=q, k_out=kv, v_out=kv)
    with pytest.raises(ValueError, match="q_out must be"):
        linear_rope_qkv(x, packed, n_heads=2, n_kv_heads=2, head_dim=16, position=0, base=1e4,
                        q_out=kdsl.empty((2, 16)), k_out=kv, v_out=kv)
    with pytest.raises(ValueError, match="position"):
        linear_rope_qkv(x, packed, n_heads=2, n_kv_heads=2, head_dim=16, position=-1, base=1e4,
                        q_out=q, k_out=kv, v_out=kv)


def test_an_integer_dot_config_runs_the_word_kernel():
    # the integer GEMV has no RoPE form: a tuned or default "idot" config for
    # the QKV weight gives the float word kernel's default here
    packed = fp4.quantize(np.ones((3 * 64, 128), np.float32), group_size=64)
    idot = {"lanes": "idot", "BN": 16, "BW": 1024, "XBITS": 16, "FUSED_X": True,
            "num_threads": 128}
    assert _rope_gemv_config(idot, 128) == word_gemv_default(128)
    assert rope_fusable(packed, 64, kdsl.current_device(), idot)
