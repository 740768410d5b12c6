"""kdsl_kernels.attention against numpy, on the device and in the interpreter: prefill, chunked
prefill (T > S), decode with flash-decoding splits, GQA/MQA, causal, sliding window, head dims
64/128/256, lengths that are not multiples of the blocks, strided views in and out."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kdsl
from kdsl_kernels import attention

SMALL = {"BM": 4, "BN": 8, "BK": 8, "num_threads": 4}   # quick to compile, many blocks per row
# the CPU form: one work-item, the output accumulator kept in memory
SMALL_IN_MEMORY = {"BM": 4, "BN": 8, "BK": 8, "num_threads": 1, "acc_in_memory": True}
# the CPU decode form: one (head, query) row per program, no kl.dot
SMALL_ROWS = {"form": "rows", "BN": 8, "num_threads": 1}
CONFIGS = {"blocks": SMALL, "in_memory": SMALL_IN_MEMORY, "rows": SMALL_ROWS}


def _run(interpret, fn):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDSL_INTERPRET", "1" if interpret else "0")
        return fn()


def attention_ref(q, k, v, causal=True, window=None, scale=None):
    """The textbook formula in float64: repeat K/V heads, mask, softmax, weigh V."""
    H, S, D = q.shape
    KVH, T, _ = k.shape
    k = np.repeat(k.astype(np.float64), H // KVH, axis=0)
    v = np.repeat(v.astype(np.float64), H // KVH, axis=0)
    scores = np.einsum("hsd,htd->hst", q.astype(np.float64), k) * (scale or 1 / np.sqrt(D))
    pos = T - S + np.arange(S)[:, None]
    keys = np.arange(T)[None, :]
    visible = np.ones((S, T), bool)
    if causal:
        visible &= keys <= pos
    if window is not None:
        visible &= keys > pos - window
    scores = np.where(visible, scores, -np.inf)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def _inputs(rng, H, KVH, S, T, D, dtype=np.float32):
    return (rng.standard_normal((H, S, D)).astype(dtype),
            rng.standard_normal((KVH, T, D)).astype(dtype),
            rng.standard_normal((KVH, T, D)).astype(dtype))


cases = dict(kvh=st.integers(1, 3), group=st.sampled_from([1, 2, 4]), s=st.integers(1, 40),
             past=st.integers(0, 60), d=st.sampled_from([8, 24, 64]), causal=st.booleans(),
             window=st.sampled_from([None, 1, 5, 30]), splits=st.sampled_from([1, 3]),
             form=st.sampled_from(sorted(CONFIGS)), seed=st.integers(0, 2**16))


def _check_case(interpret, kvh, group, s, past, d, causal, window, splits, form, seed):
    config = CONFIGS[form]
    rng = np.random.default_rng(seed)
    q, k, v = _inputs(rng, kvh * group, kvh, s, s + past, d)
    if window is not None:
        causal = True
    out = _run(interpret, lambda: attention(q, k, v, causal=causal, window=window,
                                            config=dict(config, splits=splits)).numpy())
    np.testing.assert_allclose(out, attention_ref(q, k, v, causal, window), rtol=1e-4, atol=1e-4)


@given(**cases)
def test_attention_in_interpreter(kvh, group, s, past, d, causal, window, splits, form, seed):
    _check_case(True, kvh, group, s, past, d, causal, window, splits, form, seed)


@settings(max_examples=6)     # each example compiles a kernel or two on PoCL
@given(**cases)
def test_attention_on_device(kvh, group, s, past, d, causal, window, splits, form, seed):
    _check_case(False, kvh, group, s, past, d, causal, window, splits, form, seed)


@pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])
@pytest.mark.parametrize("causal,window,splits", [(True, None, 1), (False, None, 3),
                                                   (True, 7, 2), (True, None, 4)])
def test_rows_form_on_decode_and_short_chunks(interpret, causal, window, splits):
    """The CPU decode form over GQA, a 1-query decode and a 5-query chunk, key splits that
    leave some splits empty (4 splits of 8-key blocks over 13 keys), and a window."""
    rng = np.random.default_rng(splits)
    for s, t in ((1, 13), (5, 40)):
        q, k, v = _inputs(rng, 6, 2, s, t, 64)
        out = _run(interpret, lambda: attention(q, k, v, causal=causal, window=window,
                                                config=dict(SMALL_ROWS, splits=splits)).numpy())
        np.testing.assert_allclose(out, attention_ref(q, k, v, causal, window), rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])
@pytest.mark.parametrize("d", [64, 128, pytest.param(256, marks=pytest.mark.slow)])
@pytest.mark.parametrize("s,t", [(37, 37), (1, 300), (20, 150)])
def test_head_dims_with_default_config(interpret, d, s, t):
    rng = np.random.default_rng(d + s)
    q, k, v = _inputs(rng, 4, 2, s, t, d)
    out = _run(interpret, lambda: attention(q, k, v).numpy())
    np.testing.assert_allclose(out, attention_ref(q, k, v), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])
@pytest.mark.parametrize("d", [64, pytest.param(128, marks=pytest.mark.slow)])
def test_default_config_with_an_fp16_kv_cache(interpret, d):
    """The engine's case: fp16 K/V, a prefill chunk after cached tokens, and decode."""
    rng = np.random.default_rng(d)
    for s, t in ((24, 90), (1, 90)):
        q, k, v = _inputs(rng, 6, 2, s, t, d)
        k, v = k.astype(np.float16), v.astype(np.float16)
        out = _run(interpret, lambda: attention(q, k, v).numpy())
        np.testing.assert_allclose(out, attention_ref(q, k, v), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("interpret", [False, True], ids=["device", "interpreter"])
def test_views_of_a_kv_cache_and_a_strided_out(interpret):
    """q from a [S, H*D] projection, k/v the prefix of a [KVH, Tmax, D] fp16 cache, out laid
    out [S, H*D] for the output projection: the engine's decode and chunked-prefill calls."""
    H, KVH, S, past, D, t_max = 4, 2, 3, 9, 16, 32
    rng = np.random.default_rng(5)
    q_proj = rng.standard_normal((S, H * D)).astype(np.float32)
    k_cache = rng.standard_normal((KVH, t_max, D)).astype(np.float16)
    v_cache = rng.standard_normal((KVH, t_max, D)).astype(np.float16)
    q = kdsl.tensor(q_proj).reshape(S, H, D).permute(1, 0, 2)
    kc, vc = kdsl.tensor(k_cache), kdsl.tensor(v_cache)
    out_proj = kdsl.zeros((S, H * D))
    out = out_proj.reshape(S, H, D).permute(1, 0, 2)
    T = past + S
    _run(interpret, lambda: attention(q, kc[:, :T], vc[:, :T], window=6, out=out,
                                      config=dict(SMALL_ROWS, splits=2)))
    expected = attention_ref(q_proj.reshape(S, H, D).transpose(1, 0, 2),
                             k_cache[:, :T].astype(np.float32), v_cache[:, :T].astype(np.float32),
                             window=6)
    np.testing.assert_allclose(out_proj.numpy(), expected.transpose(1, 0, 2).reshape(S, H * D),
                               rtol=1e-4, atol=1e-4)


def test_explicit_scale_and_mqa_non_causal():
    rng = np.random.default_rng(6)
    q, k, v = _inputs(rng, 6, 1, 5, 12, 8)
    out = attention(q, k, v, causal=False, scale=0.3, config=SMALL).numpy()
    np.testing.assert_allclose(out, attention_ref(q, k, v, False, scale=0.3), rtol=1e-4,
                               atol=1e-4)


def test_bad_input_names_the_cause():
    q = np.zeros((4, 2, 8), np.float32)
    kv = np.zeros((3, 5, 8), np.float32)
    with pytest.raises(ValueError, match="multiple of the 3 key/value heads"):
        attention(q, kv, kv)
    with pytest.raises(ValueError, match="fewer than the 3 queries"):
        attention(np.zeros((2, 3, 8), np.float32), np.zeros((1, 2, 8), np.float32),
                  np.zeros((1, 2, 8), np.float32))
    with pytest.raises(ValueError, match="head_dim 8 but k has 4"):
        attention(q, np.zeros((2, 5, 4), np.float32), np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="window must be a positive"):
        attention(q, np.zeros((2, 5, 8), np.float32), np.zeros((2, 5, 8), np.float32), window=0)


def test_partial_config_keeps_the_default_form():
    # {"splits": 2} changes the split count of whichever form the default picks (decode on a
    # CPU: the row form) rather than switching to blocks without their sizes; a block-only
    # parameter asks for the block form
    rng = np.random.default_rng(11)
    q = rng.standard_normal((9, 1, 64)).astype(np.float32)
    k = rng.standard_normal((3, 300, 64)).astype(np.float32)
    v = rng.standard_normal((3, 300, 64)).astype(np.float32)
    expected = attention_ref(q, k, v, causal=False)
    for config in ({"splits": 2}, {"BN": 8}, {"BM": 4, "BN": 8}):
        out = attention(kdsl.tensor(q), kdsl.tensor(k), kdsl.tensor(v), causal=False,
                        config=config).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
