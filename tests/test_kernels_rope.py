"""kdsl_kernels.rope against numpy (and transformers' Llama RoPE), on the device and in the
interpreter: both layouts, partial rotary, positions as an int or an array, strided views in and
out (the fused RoPE + KV-cache write)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kdsl
from kdsl_kernels import rope, rope_qkv
from kdsl_kernels.rope import inv_freq

MODES = pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])


def _run(interpret, fn):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSL_INTERPRET", "1" if interpret else "0")
        return fn()


def rope_ref(x, positions, base, rotary_dim, interleaved):
    """x [H, S, D] rotated as transformers does it (float32 angles)."""
    freqs = inv_freq(base, rotary_dim)
    angle = positions.astype(np.float32)[:, None] * freqs[None, :]
    cos, sin = np.cos(angle.astype(np.float64)), np.sin(angle.astype(np.float64))
    out = x.astype(np.float64).copy()
    if interleaved:
        a, b = x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
        out[..., 0:rotary_dim:2] = a * cos - b * sin
        out[..., 1:rotary_dim:2] = b * cos + a * sin
    else:
        a, b = x[..., :rotary_dim // 2], x[..., rotary_dim // 2:rotary_dim]
        out[..., :rotary_dim // 2] = a * cos - b * sin
        out[..., rotary_dim // 2:rotary_dim] = b * cos + a * sin
    return out


@MODES
@given(h=st.integers(1, 4), s=st.integers(1, 12), half_d=st.integers(1, 40),
       rotary_fraction=st.sampled_from([1.0, 0.5, 0.25]), interleaved=st.booleans(),
       p0=st.integers(0, 3000), as_array=st.booleans(), base=st.sampled_from([1e4, 5e5]),
       seed=st.integers(0, 2**16))
def test_rope_matches_reference(interpret, h, s, half_d, rotary_fraction, interleaved, p0,
                                as_array, base, seed):
    d = 2 * half_d
    rotary_dim = max(2, int(d * rotary_fraction) // 2 * 2)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((h, s, d)).astype(np.float32)
    positions = p0 + rng.permutation(s).astype(np.int32) if as_array else p0 + np.arange(s)
    pos_arg = positions.astype(np.int32) if as_array else p0
    out = _run(interpret, lambda: rope(x, pos_arg, base, rotary_dim=rotary_dim,
                                       interleaved=interleaved).numpy())
    np.testing.assert_allclose(out, rope_ref(x, positions, base, rotary_dim, interleaved),
                               rtol=1e-4, atol=1e-4)


@MODES
@pytest.mark.parametrize("as_array", [False, True])
@pytest.mark.parametrize("S, D", [(16, 128), (8, 64), (1, 32)])
def test_rope_full_blocks_write_only_their_slot(interpret, as_array, S, D):
    """Shapes whose blocks are all live (the unmasked path: the pairs fill the
    block, the tokens a multiple of its rows): the slot holds the rotation and
    the cache rows around it keep their values."""
    H, p0 = 3, 40
    rng = np.random.default_rng(S + D)
    x = rng.standard_normal((S, H * D)).astype(np.float32)
    cache = kdsl.tensor(np.full((H, p0 + S + 4, D), 7, np.float32))
    positions = p0 + np.arange(S, dtype=np.int32)
    view = kdsl.tensor(x).reshape(S, H, D).permute(1, 0, 2)
    _run(interpret, lambda: rope(view, positions if as_array else p0, 1e4,
                                 out=cache[:, p0:p0 + S]))
    expected = np.full(cache.shape, 7, np.float64)
    expected[:, p0:p0 + S] = rope_ref(x.reshape(S, H, D).transpose(1, 0, 2), positions, 1e4, D,
                                      False)
    np.testing.assert_allclose(cache.numpy(), expected, rtol=1e-5, atol=1e-5)


@MODES
@pytest.mark.parametrize("fp16", [False, True])
def test_rope_from_a_projection_view_into_a_cache_slot(interpret, fp16):
    S, KVH, D, p0 = 5, 2, 16, 3
    rng = np.random.default_rng(1)
    k = rng.standard_normal((S, KVH * D)).astype(np.float32)
    dtype = np.float16 if fp16 else np.float32
    cache = kdsl.tensor(np.full((KVH, 12, D), 9, dtype))
    view = kdsl.tensor(k).reshape(S, KVH, D).permute(1, 0, 2)
    slot = cache[:, p0:p0 + S]
    assert _run(interpret, lambda: rope(view, p0, 1e4, out=slot)) is slot
    expected = np.full((KVH, 12, D), 9, np.float64)
    expected[:, p0:p0 + S] = rope_ref(k.reshape(S, KVH, D).transpose(1, 0, 2),
                                      p0 + np.arange(S), 1e4, D, False)
    np.testing.assert_allclose(cache.numpy().astype(np.float64), expected,
                               rtol=2e-3 if fp16 else 1e-5, atol=2e-3 if fp16 else 1e-5)


@MODES
def test_rope_in_place_with_custom_inv_freq(interpret):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    freqs = np.array([1.0, 0.5, 0.25, 0.125], np.float32)
    t = kdsl.tensor(x)
    _run(interpret, lambda: rope(t, 10, inv_freq=freqs, out=t))
    angle = (10 + np.arange(4, dtype=np.float32))[:, None] * freqs
    a, b = x[..., :4], x[..., 4:]
    expected = np.concatenate([a * np.cos(angle) - b * np.sin(angle),
                               b * np.cos(angle) + a * np.sin(angle)], axis=-1)
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-5, atol=1e-5)


@MODES
def test_rope_with_device_positions_computes_cos_sin_in_the_kernel(interpret):
    """Positions on the device (maximum unknown to the host) and a device inv_freq take the
    path that computes cos/sin per element instead of reading the tables."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 6, 16)).astype(np.float32)
    positions = np.array([4000, 7, 0, 123, 2047, 9], np.int32)
    out = _run(interpret, lambda: rope(x, kdsl.tensor(positions), 1e4).numpy())
    np.testing.assert_allclose(out, rope_ref(x, positions, 1e4, 16, False), rtol=1e-4, atol=1e-4)
    freqs = kdsl.tensor(inv_freq(1e4, 16))
    out = _run(interpret, lambda: rope(x, 50, inv_freq=freqs, interleaved=True).numpy())
    np.testing.assert_allclose(out, rope_ref(x, 50 + np.arange(6), 1e4, 16, True), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.slow
def test_rope_matches_transformers_llama():
    torch = pytest.importorskip("torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    H, S, D, p0, base = 4, 7, 64, 1000, 500000.0
    rng = np.random.default_rng(4)
    q = rng.standard_normal((1, H, S, D)).astype(np.float32)
    freqs = torch.tensor(inv_freq(base, D))
    angle = (torch.arange(p0, p0 + S, dtype=torch.float32)[:, None] * freqs[None, :])
    emb = torch.cat((angle, angle), dim=-1)
    expected, _ = llama.apply_rotary_pos_emb(torch.tensor(q), torch.tensor(q),
                                             emb.cos()[None], emb.sin()[None])
    out = rope(q[0], p0, base).numpy()
    np.testing.assert_allclose(out, expected[0].numpy(), rtol=1e-4, atol=1e-4)


@MODES
@given(h=st.integers(1, 4), kvh=st.integers(1, 3), s=st.integers(1, 9),
       half_d=st.sampled_from([1, 4, 8, 12, 32]), rotary_fraction=st.sampled_from([1.0, 0.5]),
       interleaved=st.booleans(), p0=st.integers(0, 3000), as_array=st.booleans(),
       fp16=st.booleans())
@settings(max_examples=12, deadline=None)
def test_rope_qkv_equals_rope_rope_and_copy(interpret, h, kvh, s, half_d, rotary_fraction,
                                             interleaved, p0, as_array, fp16):
    """One launch from a fused [S, (H + 2 KVH) * D] projection into q and fp32/fp16 cache slots."""
    d = 2 * half_d
    rotary_dim = max(2, int(d * rotary_fraction) // 2 * 2)
    rng = np.random.default_rng(h * 100 + s)
    qkv = rng.standard_normal((s, (h + 2 * kvh) * d)).astype(np.float32)
    qkv_t = kdsl.tensor(qkv)
    width = qkv.shape[1]

    def heads(start, count):
        return kdsl.Tensor(qkv_t.buffer, (count, s, d), qkv_t.dtype, qkv_t.device,
                           start * d, (d, width, 1))
    cache_dtype = np.float16 if fp16 else np.float32
    k_cache = kdsl.zeros((kvh, p0 + s + 2, d), cache_dtype)
    v_cache = kdsl.zeros((kvh, p0 + s + 2, d), cache_dtype)
    q_out = kdsl.zeros((h, s, d))
    positions = np.arange(p0, p0 + s, dtype=np.int32) if as_array else p0
    _run(interpret, lambda: rope_qkv(heads(0, h), heads(h, kvh), heads(h + kvh, kvh), positions,
                                     1e5, rotary_dim=rotary_dim, interleaved=interleaved,
                                     q_out=q_out, k_out=k_cache[:, p0:p0 + s],
                                     v_out=v_cache[:, p0:p0 + s]))
    split = qkv.reshape(s, h + 2 * kvh, d).transpose(1, 0, 2)
    pos = np.arange(p0, p0 + s)
    tol = dict(rtol=2e-3, atol=2e-3) if fp16 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(q_out.numpy(), rope_ref(split[:h], pos, 1e5, rotary_dim,
                                                       interleaved), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(k_cache.numpy()[:, p0:p0 + s].astype(np.float32),
                               rope_ref(split[h:h + kvh], pos, 1e5, rotary_dim, interleaved),
                               **tol)
    np.testing.assert_allclose(v_cache.numpy()[:, p0:p0 + s].astype(np.float32),
                               split[h + kvh:].astype(cache_dtype).astype(np.float32))
    assert not k_cache.numpy()[:, p0 + s:].any() and not v_cache.numpy()[:, :p0].any()


def test_rope_qkv_bad_shapes_name_the_cause():
    q = np.zeros((4, 3, 8), np.float32)
    k = np.zeros((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match="k and v must both be"):
        rope_qkv(q, k, np.zeros((2, 4, 8), np.float32), 0, q_out=kdsl.zeros((4, 3, 8)),
                 k_out=kdsl.zeros((2, 3, 8)), v_out=kdsl.zeros((2, 4, 8)))
    with pytest.raises(ValueError, match="v_out"):
        rope_qkv(q, k, k, 0, q_out=kdsl.zeros((4, 3, 8)), k_out=kdsl.zeros((2, 3, 8)),
                 v_out=kdsl.zeros((2, 3, 4)))


def test_bad_input_names_the_cause():
    x = np.zeros((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        rope(x, 0, rotary_dim=3)
    with pytest.raises(ValueError, match=r"positions must be an int or int32 of shape \(3,\)"):
        rope(x, kdsl.tensor(np.zeros(4, np.int32)))
    with pytest.raises(ValueError, match="3-D"):
        rope(np.zeros((3, 8), np.float32), 0)
