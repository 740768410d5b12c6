"""The FP4 GEMV with integer products (kdsl_kernels/fp4_idot.py): x quantised
per group to int8 or int16, then integer dots with the codes.

Two checks, so that neither needs a loose tolerance: the quantiser against
numpy's rounding of x, and the GEMV against numpy given the integers the
quantiser wrote (exact integer sums, then float epilogue). A third checks
what a user sees: the output is within x's rounding of x @ dequantize(W).T.
On NVIDIA's OpenCL the products are dp4a/dp2a (inline PTX); elsewhere the
same kernel's integer arithmetic in the language.
"""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import kdsl
from kdsl_kernels import fp4
from kdsl_kernels.fp4_idot import x_buffers

IDOT = {"lanes": "idot", "BN": 4, "BW": 8, "XBITS": 8, "num_threads": 32}
XMAX = {8: 127.0, 16: 32767.0}


def _padded_groups(xp, G):
    k = xp.shape[0]
    groups = np.zeros(-(-k // G) * G, np.float32)
    groups[:k] = xp
    return groups.reshape(-1, G)


def _x_lane_elements(G, xbits):
    """The group element each of xq's lanes holds, in memory order: int8 two
    planes (low, high nibbles' x) of G/8 words of four; int16 four planes,
    plane j's word w holding the two elements code word w's bytes 2(j % 2)
    and 2(j % 2) + 1 multiply, of the low nibbles (4w + ...) for j < 2, of
    the high ones (G/2 + 4w + ...) after."""
    qw = G // 8
    if xbits == 8:
        return np.array([half * G // 2 + 4 * w + b
                         for half in range(2) for w in range(qw) for b in range(4)])
    return np.array([(j // 2) * G // 2 + 4 * w + 2 * (j % 2) + h
                     for j in range(4) for w in range(qw) for h in range(2)])


def _quantised_x(device, K, G, xbits):
    """(q [n_groups, G] int, d [n_groups, G] (each element's step), sum(x') per
    code word) as the kernel wrote them."""
    n_groups = -(-K // G)
    xq, xd, xsw, _ = x_buffers(device, n_groups, G, xbits)
    words = xq.numpy()[: n_groups * G * xbits // 32]
    lanes = words.view(np.int8 if xbits == 8 else np.int16).astype(np.int64).reshape(n_groups, G)
    q = np.empty_like(lanes)
    q[:, _x_lane_elements(G, xbits)] = lanes
    halves = xd.numpy()[: 2 * n_groups].astype(np.float64).reshape(n_groups, 2) * 16
    return q, np.repeat(halves, G // 2, axis=1), xsw.numpy()[: n_groups * G // 8]


def _reference(x, g, packed, q, d, bias, f, gated, eps=1e-5):
    """The GEMV's result for the integers q (steps d) the quantiser wrote:
    the codes' dot with q * d, the offset term on the exact sum of x' (as the
    kernel takes it), the outliers on the float x', then 1/rms, bias, SwiGLU."""
    G = packed.group_size
    xp = x * g if g is not None else x
    groups = _padded_groups(xp, G).astype(np.float64)
    xr = (q * d).reshape(-1)[: x.shape[0]]
    w = fp4.dequantize(packed).astype(np.float64)
    w[:, packed.outlier_idx] -= packed.outlier_w.astype(np.float64)        # the FP4 body
    _, base = packed.group_affine()                    # s + o per group (uniform reading)
    moved = groups.sum(axis=1) - (q * d).sum(axis=1)
    y = w @ xr + base.astype(np.float64) @ moved
    y += packed.outlier_w.astype(np.float64) @ xp[packed.outlier_idx]
    if g is not None:
        y /= np.sqrt((x.astype(np.float64) ** 2).mean() + eps)
    if bias is not None:
        y += bias
    if gated:
        y = y[:f] / (1 + np.exp(-y[:f])) * y[f:]
    return y


@settings(max_examples=8, deadline=None)           # each draw compiles; CI builds cold
@given(n=st.integers(1, 40), k=st.integers(1, 300), group_size=st.sampled_from((16, 32, 64, 128)),
       xbits=st.sampled_from((8, 16)), bn=st.sampled_from((1, 4, 8)),
       bw=st.sampled_from((2, 8, 32)), threads=st.sampled_from((1, 16, 64)),
       gated=st.booleans(), norm=st.booleans(), accumulate=st.booleans(),
       outliers=st.integers(0, 2), bias=st.booleans(), seed=st.integers(0, 2**16))
@example(n=1, k=1, group_size=16, xbits=8, bn=1, bw=2, threads=1, gated=False, norm=False,
         accumulate=False, outliers=0, bias=False, seed=0)          # one weight
@example(n=64, k=256, group_size=64, xbits=8, bn=4, bw=32, threads=64, gated=True, norm=True,
         accumulate=True, outliers=0, bias=False, seed=1)           # EVEN, all fusions
@example(n=37, k=200, group_size=32, xbits=16, bn=8, bw=8, threads=16, gated=False, norm=True,
         accumulate=False, outliers=2, bias=True, seed=2)           # row and K tails, int16
@example(n=20, k=80, group_size=16, xbits=16, bn=8, bw=2, threads=1, gated=False, norm=False,
         accumulate=True, outliers=1, bias=False, seed=28221)       # crashed PoCL's compiler
@example(n=10, k=96, group_size=16, xbits=16, bn=4, bw=8, threads=4, gated=True, norm=True,
         accumulate=False, outliers=0, bias=False, seed=5)          # whole groups, a step past them
def test_idot_gemv_matches_reference(n, k, group_size, xbits, bn, bw, threads, gated, norm,
                                     accumulate, outliers, bias, seed):
    rng = np.random.default_rng(seed)
    rows = 2 * n if gated else n
    packed = fp4.quantize((rng.standard_normal((rows, k)) * 0.05).astype(np.float32),
                          group_size, outliers=min(outliers, k))
    x = (rng.standard_normal(k) * 3).astype(np.float32)
    g = rng.uniform(0.5, 1.5, k).astype(np.float32) if norm else None
    b = rng.standard_normal(rows).astype(np.float32) if bias else None
    start = rng.standard_normal((1, n)).astype(np.float32)
    out = kdsl.tensor(start)
    fp4.linear(kdsl.tensor(x[None, :]), packed, bias=b, out=out,
               config=dict(IDOT, BN=bn, BW=bw, XBITS=xbits, num_threads=threads),
               activation="swiglu" if gated else None,
               rms_norm=(g, 1e-5) if norm else None, accumulate=accumulate)
    q, d, _ = _quantised_x(out.device, k, group_size, xbits)
    ref = _reference(x, g, packed, q, d, b, n, gated) + (start[0] if accumulate else 0)
    np.testing.assert_allclose(out.numpy()[0], ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    # x quantised inside the GEMV: the same integers, so the same result
    # (out refilled, with NaN where it is overwritten, so a GEMV that writes
    # nothing cannot pass on the first run's output)
    out = kdsl.tensor(start if accumulate else np.full_like(start, np.nan))
    fp4.linear(kdsl.tensor(x[None, :]), packed, bias=b, out=out,
               config=dict(IDOT, BN=bn, BW=bw, XBITS=xbits, FUSED_X=True, num_threads=threads),
               activation="swiglu" if gated else None,
               rms_norm=(g, 1e-5) if norm else None, accumulate=accumulate)
    np.testing.assert_allclose(out.numpy()[0], ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))


@settings(max_examples=10, deadline=None)
@given(k=st.integers(1, 300), group_size=st.sampled_from((16, 32, 64, 128)),
       xbits=st.sampled_from((8, 16)), norm=st.booleans(), zeros=st.booleans(),
       seed=st.integers(0, 2**16))
def test_quantiser_rounds_x_to_nearest(k, group_size, xbits, norm, zeros, seed):
    # q = round(x' / d), d = max|x'| / XMAX per group (int16) or half-group (int8);
    # groups of zeros give 0
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(k) * rng.uniform(0.01, 100)).astype(np.float32)
    if zeros:
        x[: group_size] = 0.0
    g = rng.uniform(0.5, 1.5, k).astype(np.float32) if norm else None
    packed = fp4.quantize(np.ones((1, k), np.float32), group_size)
    fp4.linear(kdsl.tensor(x[None, :]), packed, config=dict(IDOT, XBITS=xbits),
               rms_norm=(g, 1e-5) if norm else None)
    q, d, xsw = _quantised_x(kdsl.current_device(), k, group_size, xbits)
    groups = _padded_groups(x * g if norm else x, group_size).astype(np.float64)
    span = group_size if xbits == 16 else group_size // 2
    amax = np.abs(groups).reshape(len(groups), -1, span).max(axis=2)
    np.testing.assert_allclose(d, np.repeat(amax, span, axis=1) / XMAX[xbits], rtol=1e-6)
    exact = np.divide(groups, d, out=np.zeros_like(groups), where=d > 0)
    assert np.abs(q).max() <= XMAX[xbits]
    # float32 rounding of 1/d and of x' / d: a few ulp of XMAX
    assert (np.abs(q - exact) <= 0.5 + 1e-6 * XMAX[xbits]).all()
    half = group_size // 2
    word_sums = groups[:, :half].reshape(-1, group_size // 8, 4).sum(2) + \
        groups[:, half:].reshape(-1, group_size // 8, 4).sum(2)
    np.testing.assert_allclose(xsw, word_sums.reshape(-1), rtol=1e-5, atol=1e-5 * np.abs(x).max())


@pytest.mark.parametrize("xbits", [8, 16])
def test_error_is_within_x_rounding(xbits):
    # what the user sees: x @ W.T moved by at most |W| times half of each step d
    # (a group's, or for int8 a half-group's), and by more than float rounding
    rng = np.random.default_rng(xbits)
    k, n = 1000, 50
    packed = fp4.quantize((rng.standard_normal((n, k)) * 0.05).astype(np.float32), 64)
    x = rng.standard_normal((1, k)).astype(np.float32)
    y = fp4.linear(kdsl.tensor(x), packed, config=dict(IDOT, XBITS=xbits)).numpy()
    w = fp4.dequantize(packed).astype(np.float64)
    ref = x @ w.T
    span = 64 if xbits == 16 else 32
    groups = np.abs(_padded_groups(x[0], span)).max(axis=1) / XMAX[xbits]
    step = np.repeat(groups, span)[:k]
    bound = step @ np.abs(w).T / 2 * 1.01 + 1e-5
    assert (np.abs(y - ref) <= bound).all()
    # the float GEMV is within float rounding; x's rounding moves y well past it
    exact = fp4.linear(kdsl.tensor(x), packed, config={"BN": 4, "BW": 8, "DEQ": "convert",
                                                         "num_threads": 1}).numpy()
    assert np.abs(y - ref).max() > 10 * np.abs(exact - ref).max()


def test_idot_in_interpreter(monkeypatch):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    for xbits, gated in ((8, True), (16, False)):
        test_idot_gemv_matches_reference.hypothesis.inner_test(
            n=9, k=70, group_size=32, xbits=xbits, bn=4, bw=8, threads=16, gated=gated,
            norm=True, accumulate=gated, outliers=1, bias=True, seed=3)


def test_power_of_two_reading_takes_the_float_gemv():
    # e4m0's grid is not affine in the code: the integer config falls back, exactly
    rng = np.random.default_rng(4)
    packed = fp4.quantize((rng.standard_normal((12, 96)) * 0.05).astype(np.float32), 32,
                          reading="e4m0")
    x = rng.standard_normal((1, 96)).astype(np.float32)
    y = fp4.linear(kdsl.tensor(x), packed, config=IDOT).numpy()
    np.testing.assert_allclose(y, x @ fp4.dequantize(packed).T, rtol=1e-4, atol=1e-4)


def test_bad_xbits_names_the_cause():
    packed = fp4.quantize(np.ones((4, 64), np.float32))
    with pytest.raises(ValueError, match="XBITS must be 8 or 16, got 4"):
        fp4.linear(np.ones((1, 64), np.float32), packed, config=dict(IDOT, XBITS=4))


def test_engine_decode_with_the_integer_gemv(tmp_path, monkeypatch):
    # a tiny m0e4 Llama whose decode GEMVs (norm, SwiGLU and residual fusions included)
    # take the integer form: replayed steps equal eager ones (two launches per GEMV,
    # x in shared scratch), and the logits stay within int16 x's rounding of the
    # float GEMV's
    pytest.importorskip("transformers")
    from engine import LLM
    from engine.graph import StepGraph
    import kdsl_kernels.fp4_kernels as fp4_kernels
    from test_engine_model import VOCAB, assert_close, decode_logits, save_tiny
    save_tiny("llama", tmp_path)
    ids = np.random.default_rng(2).integers(0, VOCAB, 12).tolist()
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[8])                # launch_idot's `fused`
        return launch_idot(*args, **kwargs)

    launch_idot = fp4_kernels.launch_idot
    monkeypatch.setattr(fp4_kernels, "launch_idot", counted)
    logits = {}
    for name, cfg in (("float", {"BN": 4, "BW": 8, "DEQ": "convert", "num_threads": 1}),
                      ("idot", dict(IDOT, XBITS=16, num_threads=1))):
        monkeypatch.setattr(fp4_kernels, "gemv_default", lambda device, K=None, c=cfg: dict(c))
        llm = LLM.load(tmp_path, quant="m0e4", chunk=8, context=64, use_cache=False,
                       progress=False)
        logits[name] = decode_logits(llm, ids, None)
        if name == "idot":
            graph = StepGraph()
            np.testing.assert_array_equal(decode_logits(llm, ids, graph), logits[name])
            assert graph.n_launches > 0
    assert {f["NORM"] for f in calls} == {True, False}
    assert any(f["GATED"] for f in calls) and any(f["ACCUMULATE"] for f in calls)
    assert_close(logits["idot"], logits["float"], rel=3e-4)


def test_a_tuned_integer_config_reaches_the_gemv(tmp_path, monkeypatch):
    # the tuner stores an idot config where the default is the float word kernel (a
    # GPU's): the library must run it, not drop it for its other parameter names
    from kdsl import tuning_db
    import kdsl_kernels.fp4_kernels as fp4_kernels
    monkeypatch.setenv("KDSL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning_db, "_databases", {})
    word = {"BN": 4, "BW": 128, "DEQ": "convert", "num_threads": 128}
    monkeypatch.setattr(fp4_kernels, "gemv_default", lambda device, K=None: dict(word))
    packed = fp4.quantize(np.ones((64, 256), np.float32), 64)
    device = kdsl.current_device()
    assert fp4_kernels.fp4_gemv_config(packed, device) == word
    tuned = dict(IDOT, XBITS=16)
    tuning_db.database().record("fp4_gemv", {"N": 64, "K": 256, "G": 64}, tuned, 1e-5)
    assert fp4_kernels.fp4_gemv_config(packed, device) == tuned


@pytest.mark.parametrize("k, group_size, xbits, norm, bx", [
    (200, 32, 16, True, 4),       # K a tail of a group, groups past n_groups (MASK 2)
    (96, 16, 8, False, 4),        # K whole groups, 6 groups: a program half past them (MASK 1)
    (256, 32, 16, False, 8)])     # no mask (MASK 0)
def test_whole_group_quantiser_writes_what_the_spread_one_does(k, group_size, xbits, norm, bx):
    # BX groups per program, one per work-item, against one group per program
    # spread over its work-items: the same integers, steps and sums
    rng = np.random.default_rng(k)
    x = (rng.standard_normal(k) * 2).astype(np.float32)
    g = rng.uniform(0.5, 1.5, k).astype(np.float32) if norm else None
    packed = fp4.quantize(np.ones((1, k), np.float32), group_size)
    device = kdsl.current_device()
    n_groups = -(-k // group_size)
    sizes = (n_groups * group_size * xbits // 32, 2 * n_groups, n_groups * group_size // 8,
             n_groups)
    written = []
    for blocks in (1, bx):
        buffers = x_buffers(device, n_groups, group_size, xbits)
        for b in buffers:                   # nothing left from the run before
            b.copy_from(np.full(b.shape, 0xFFFFFFFF, np.uint32).view(b.dtype))
        fp4.linear(kdsl.tensor(x[None, :]), packed, config=dict(IDOT, XBITS=xbits, BX=blocks),
                   rms_norm=(g, 1e-5) if norm else None)
        written.append([b.numpy()[:size].copy() for b, size in zip(buffers, sizes)])
    for spread, whole in zip(*written):
        np.testing.assert_allclose(whole, spread, rtol=1e-6, atol=1e-6)
