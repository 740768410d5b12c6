"""kdsl_kernels.fp4: the numpy reference, the packed format, and the fused
dequantising GEMV/GEMM against x @ dequantize(W).T, on the device and in
the interpreter."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import kdsl
from kdsl_kernels import fp4

SMALL_GEMM = {"BM": 8, "BN": 8, "DEQ": "bits", "num_threads": 8}      # quick to compile
SMALL_GEMV = {"BN": 4, "BW": 4, "DEQ": "bits", "num_threads": 1}
BYTES_GEMV = {"BN": 4, "BK": 16, "lanes": "bytes", "num_threads": 1}   # the CPU GEMV
INT16_GEMV = {"BN": 8, "lanes": "int16", "num_threads": 1}   # CPU, x rounded to int16
CPU_GEMVS = {"bytes": BYTES_GEMV, "int16": INT16_GEMV}
# the weight-stationary GEMM (fp4_gemm_acc_kernel, the CPU default's kind)
ACC_GEMM = {"BM": 4, "BN": 16, "BK": 16, "acc_in_memory": True, "num_threads": 1}
# the weight dequantised into fp32 panels, then matmul's panel GEMM (the CPU default, M >= 32)
PANEL_GEMM = {"BM": 4, "BN": 16, "BK": 16, "acc_in_memory": False, "pack_b": True,
              "num_threads": 1}


def _weight(rng, n, k):
    return (rng.standard_normal((n, k)) * 0.05).astype(np.float32)


def _check_linear(m, n, k, group_size, outliers, reading, seed, bias=True, deq="bits",
                  config=None):
    # the tolerance also covers the int16 GEMV's x: truncated by < max|x| / 32767 per group
    rng = np.random.default_rng(seed)
    w = _weight(rng, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    packed = fp4.quantize(w, group_size, reading=reading, outliers=outliers)
    config = dict(config or (SMALL_GEMV if m == 1 else SMALL_GEMM))
    if config.get("lanes") not in ("bytes", "int16") and not config.get("acc_in_memory") \
            and not config.get("pack_b"):
        config["DEQ"] = deq        # the CPU kernels (step/base per group) have no DEQ choice
    y = fp4.linear(kdsl.tensor(x), packed, bias=b, config=config).numpy()
    ref = x @ fp4.dequantize(packed).T + (b if bias else 0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))


def _int16_x_bound(x, packed, scale=1.0):
    """How far the int16 GEMV's x @ W.T may move from its truncation of x (each
    element by less than max|x| / 32767 over its group): |W| times those steps."""
    m, k = x.shape
    G = packed.group_size
    padded = np.zeros((m, -(-k // G) * G))
    padded[:, :k] = np.abs(x)
    step = np.repeat(padded.reshape(m, -1, G).max(axis=2) / 32767, G, axis=1)[:, :k]
    return step @ np.abs(fp4.dequantize(packed).astype(np.float64)).T * scale


# ------------------------------------------------------------ numpy reference
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), k=st.integers(1, 300), group_size=st.sampled_from(fp4.GROUP_SIZES),
       reading=st.sampled_from(fp4.READINGS), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(n, k, group_size, reading, seed):
    rng = np.random.default_rng(seed)
    kp = -(-k // group_size) * group_size
    codes = rng.integers(0, 16, size=(n, kp // group_size, group_size)).astype(np.uint8)
    packed_codes = fp4._pack(codes, group_size)
    assert packed_codes.shape == (n, kp // 2)
    np.testing.assert_array_equal(fp4._unpack(packed_codes, group_size), codes)
    # and a quantised weight survives to_arrays/from_arrays unchanged
    packed = fp4.quantize(_weight(rng, n, k), group_size, reading=reading)
    again = fp4.PackedWeight.from_arrays(packed.to_arrays())
    np.testing.assert_array_equal(fp4.dequantize(again), fp4.dequantize(packed))
    assert again.shape == (n, k) and again.reading == reading


def test_layout_bit_by_bit():
    # element j of a group sits in the low nibble of byte j, element j + G/2 in its high nibble
    w = np.zeros((1, 32), np.float32)
    w[0, :] = np.arange(32) % 16          # codes 0..15 twice over [0, 15]
    packed = fp4.quantize(w, 32)
    codes = fp4._unpack(packed.codes, 32)[0, 0]
    np.testing.assert_array_equal(codes, np.arange(32) % 16)
    assert packed.codes[0, 3] == 3 | (3 << 4)
    assert packed.codes[0, 15] == 15 | (15 << 4)
    # the uniform reading's value is the fp16 bit pattern 0x3C00 | q << 6 = 1 + q/16
    halves = (np.uint16(0x3C00) | (np.arange(16, dtype=np.uint16) << 6)).view(np.float16)
    np.testing.assert_array_equal(fp4.mantissa_value(np.arange(16), "e0m4"), halves)
    # the power-of-two reading's is (q + 1) << 10, 2**(q - 14)
    halves = ((np.arange(16, dtype=np.uint16) + 1) << 10).view(np.float16)
    np.testing.assert_array_equal(fp4.mantissa_value(np.arange(16), "e4m0"), halves)
    np.testing.assert_allclose(fp4.dequantize(packed), w, atol=1e-2)


@pytest.mark.parametrize("reading", fp4.READINGS)
def test_quantisation_error_is_bounded(reading):
    rng = np.random.default_rng(0)
    w = _weight(rng, 64, 256)
    err = fp4.dequantize(fp4.quantize(w, 64, reading=reading)) - w
    rel_rmse = np.sqrt((err ** 2).mean()) / w.std()
    assert rel_rmse < (0.1 if reading == "e0m4" else 0.6)


def test_uniform_fit_min_max_then_least_squares():
    groups = fp4._to_groups(_weight(np.random.default_rng(2), 64, 256), 64)
    # min/max alone puts every weight within half a step (plus fp16 rounding of s and o)
    s, o, q = fp4._quantize_uniform(groups, refine=0)
    values = s.astype(np.float32)[..., None] * (1 + q / 16) + o.astype(np.float32)[..., None]
    half_step = ((groups.max(-1) - groups.min(-1)) / 30)[..., None]
    assert (np.abs(values - groups) <= half_step * 1.01 + 1e-4).all()
    # each refinement round keeps a group's squared error or lowers it
    sse = ((values - groups) ** 2).sum(-1)
    s, o, q = fp4._quantize_uniform(groups, refine=2)
    refined = s.astype(np.float32)[..., None] * (1 + q / 16) + o.astype(np.float32)[..., None]
    refined_sse = ((refined - groups) ** 2).sum(-1)
    assert (refined_sse <= sse + 1e-9).all() and refined_sse.sum() < 0.97 * sse.sum()


def test_outliers_are_kept_and_help():
    rng = np.random.default_rng(1)
    w = _weight(rng, 64, 256)
    w[:, [3, 100, 200]] *= 40                 # three channels with large weights
    plain = fp4.quantize(w, 64)
    kept = fp4.quantize(w, 64, outliers=3)
    np.testing.assert_array_equal(kept.outlier_idx, [3, 100, 200])
    err_plain = np.abs(fp4.dequantize(plain) - w).mean()
    err_kept = np.abs(fp4.dequantize(kept) - w).mean()
    assert err_kept < err_plain / 5
    # the outlier columns themselves are exact to fp16 rounding of the residual
    np.testing.assert_allclose(fp4.dequantize(kept)[:, [3, 100, 200]], w[:, [3, 100, 200]],
                               rtol=1e-3, atol=1e-4)


def test_constant_and_zero_rows():
    w = np.zeros((3, 70), np.float32)
    w[1] = 0.25
    out = fp4.dequantize(fp4.quantize(w, 32))
    np.testing.assert_allclose(out, w, atol=1e-4)


def test_bad_input_names_the_cause():
    with pytest.raises(ValueError, match="2-D"):
        fp4.quantize(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="group_size"):
        fp4.quantize(np.zeros((2, 8), np.float32), group_size=48)
    with pytest.raises(ValueError, match="reading"):
        fp4.quantize(np.zeros((2, 8), np.float32), reading="nf4")
    with pytest.raises(ValueError, match="NaN"):
        fp4.quantize(np.full((2, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="fp16"):
        fp4.quantize(np.array([[-1e5, 1e5]], np.float32))
    with pytest.raises(ValueError, match="missing"):
        fp4.PackedWeight.from_arrays({"codes": np.zeros((1, 16), np.uint8)})
    packed = fp4.quantize(np.ones((4, 64), np.float32))
    with pytest.raises(ValueError, match=r"shape \[M, 64\]"):
        fp4.linear(np.zeros((2, 65), np.float32), packed)
    with pytest.raises(TypeError, match="PackedWeight"):
        fp4.linear(np.zeros((2, 64), np.float32), np.zeros((4, 64), np.float32))
    with pytest.raises(ValueError, match="bias"):
        fp4.linear(np.zeros((2, 64), np.float32), packed, bias=np.zeros(5, np.float32))


# ------------------------------------------------------------------ kernels
@settings(max_examples=7, deadline=None)           # each draw compiles; CI builds cold
@given(m=st.sampled_from([1, 1, 2, 7, 9]), n=st.integers(1, 40), k=st.integers(1, 150),
       group_size=st.sampled_from([16, 32, 64]), outliers=st.sampled_from([0, 0, 3]),
       seed=st.integers(0, 2**16))
def test_linear_matches_reference(m, n, k, group_size, outliers, seed):
    _check_linear(m, n, k, group_size, min(outliers, k), "e0m4", seed)


@pytest.mark.parametrize("m", [1, 5])
def test_power_of_two_reading_on_device(m):
    _check_linear(m, 24, 96, 32, 0, "e4m0", seed=m)


@pytest.mark.parametrize("m", [1, 5])
def test_int_conversion_dequant_on_device(m):
    # DEQ="convert": w = q * s/16 + (s + o), the alternative to the bit trick
    _check_linear(m, 24, 96, 32, 0, "e0m4", seed=m, deq="convert")


@pytest.mark.parametrize("deq", ["factor", "scaled"])
@settings(max_examples=6, deadline=None)           # each draw compiles; CI builds cold
@given(n=st.integers(1, 40), k=st.integers(1, 300), group_size=st.sampled_from((16, 32, 64)),
       reading=st.sampled_from(fp4.READINGS), tile=st.sampled_from(((1, 4, 4), (4, 8, 8),
                                                                     (2, 16, 8))),
       outliers=st.integers(0, 2), bias=st.booleans(), seed=st.integers(0, 2**16))
@example(n=96, k=576, group_size=32, reading="e0m4", tile=(4, 8, 8), outliers=0, bias=False,
         seed=1)                                   # the EVEN path
def test_factored_gemv_matches_reference(deq, n, k, group_size, reading, tile, outliers, bias,
                                         seed):
    # DEQ="factor": s * sum(m x) + o * sum(x) per word; DEQ="scaled": the same with codes
    # masked in place and converted, x scaled by 2**-p to match (the power-of-two reading
    # falls back to "factor"); over K and row tails and both readings
    bn, bw, threads = tile
    _check_linear(1, n, k, group_size, min(outliers, k), reading, seed, bias=bias,
                  deq=deq, config={"BN": bn, "BW": bw, "num_threads": threads})


@pytest.mark.parametrize("deq, reading", [("factor", "e4m0"), ("scaled", "e0m4")])
def test_factored_gemv_in_interpreter(monkeypatch, deq, reading):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    _check_linear(1, 10, 70, 16, 1, reading, seed=6, deq=deq,
                  config={"BN": 2, "BW": 4, "num_threads": 4})


# BK <= 16: a [BK, BN] code tile is unrolled, and PoCL takes minutes on 64 x 16.
# Every new constexpr combination is a new PoCL build (26 s cold for the
# default 4 x 16 x 16 tile, 9 s for 2 x 8 x 8), so the drawn examples use the
# small tile and the engine's group of 32, and explicit examples cover the
# default tile and the other group sizes (the freer version of this test took
# 6.5 minutes of a cold suite run)
@settings(max_examples=5, deadline=None)           # each draw compiles; CI builds cold
@given(m=st.integers(2, 200), n=st.integers(1, 70), k=st.integers(1, 300),
       group_size=st.just(32), tile=st.just((2, 8)), bk=st.just(8),
       outliers=st.sampled_from([0, 0, 3]), bias=st.booleans(), seed=st.integers(0, 2**16))
@example(m=128, n=64, k=256, group_size=32, tile=(4, 16), bk=16, outliers=0, bias=False, seed=0)
@example(m=67, n=48, k=192, group_size=64, tile=(2, 8), bk=8, outliers=0, bias=True, seed=1)
@example(m=3, n=32, k=512, group_size=128, tile=(2, 8), bk=8, outliers=0, bias=True, seed=2)
@example(m=9, n=21, k=100, group_size=32, tile=(2, 8), bk=8, outliers=3, bias=True, seed=3)
@example(m=6, n=16, k=64, group_size=16, tile=(2, 8), bk=8, outliers=0, bias=True, seed=4)
def test_weight_stationary_gemm_matches_reference(m, n, k, group_size, tile, bk, outliers,
                                                  bias, seed):
    # the accumulator-in-memory kernel: M, N, K tails (EVEN and masked), rows past
    # the last BM block one by one, BK clamped to G/2, bias as C's initial value
    config = dict(ACC_GEMM, BM=tile[0], BN=tile[1], BK=bk)
    _check_linear(m, n, k, group_size, min(outliers, k), "e0m4", seed, bias=bias,
                  config=config)


@settings(max_examples=10, deadline=None)          # each draw compiles; CI builds cold
@given(m=st.integers(2, 40), n=st.integers(1, 40), k=st.integers(1, 200),
       group_size=st.sampled_from(fp4.GROUP_SIZES), reading=st.sampled_from(fp4.READINGS),
       tile=st.sampled_from([(4, 16, 16), (2, 8, 8), (4, 8, 32)]), outliers=st.integers(0, 3),
       bias=st.booleans(), seed=st.integers(0, 2**16))
@example(m=128, n=64, k=576, group_size=32, reading="e0m4", tile=(4, 16, 16), outliers=0,
         bias=False, seed=0)                                    # the EVEN path
def test_panel_gemm_matches_reference(m, n, k, group_size, reading, tile, outliers, bias, seed):
    # panels of BN rows from the row-tiled layout (rows past N zero), K padded to the group,
    # BK clamped to G, outlier residuals added to their panel rows, M/N/K tails
    config = dict(PANEL_GEMM, BM=tile[0], BN=tile[1], BK=tile[2])
    _check_linear(m, n, k, group_size, min(outliers, k), reading, seed, bias=bias,
                  config=config)


def test_panel_gemm_in_interpreter(monkeypatch):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    _check_linear(6, 20, 70, 32, 2, "e0m4", seed=6, config=dict(PANEL_GEMM, BN=8, BK=8))


def test_weight_stationary_gemm_readings_and_views():
    small = dict(ACC_GEMM, BM=2, BN=8, BK=8)      # quick to build; the default tile is above
    _check_linear(5, 24, 96, 32, 0, "e4m0", seed=5, config=small)
    _check_linear(7, 40, 96, 32, 0, "e0m4", seed=7, config=small)
    rng = np.random.default_rng(4)
    packed = fp4.quantize(_weight(rng, 32, 64), 32)
    big_x = kdsl.tensor(rng.standard_normal((6, 100)).astype(np.float32))
    out = kdsl.zeros((6, 40))
    fp4.linear(big_x[:, 10:74], packed, out=out[:, 4:36], config=small)
    full = out.numpy()
    np.testing.assert_allclose(full[:, 4:36], big_x.numpy()[:, 10:74] @ fp4.dequantize(packed).T,
                               rtol=1e-4, atol=1e-4)
    assert (full[:, :4] == 0).all() and (full[:, 36:] == 0).all()


cpu_only = pytest.mark.skipif(not kdsl.current_device().is_cpu,
                              reason="the byte-lane GEMV runs on CPU devices")


@cpu_only
@settings(max_examples=8, deadline=None)           # each draw compiles; CI builds cold
@given(n=st.integers(1, 40), k=st.integers(1, 300), group_size=st.sampled_from((16, 32, 64)),
       reading=st.sampled_from(fp4.READINGS), bn=st.sampled_from((1, 4, 8)),
       bk=st.sampled_from((4, 8, 16, 32)), threads=st.sampled_from((1, 2)),
       outliers=st.integers(0, 3), bias=st.booleans(), seed=st.integers(0, 2**16))
@example(n=576, k=576, group_size=64, reading="e0m4", bn=4, bk=16, threads=1, outliers=0,
         bias=False, seed=1)                       # SmolLM2's shape, the EVEN path, 2 chunks
@example(n=1, k=1, group_size=16, reading="e4m0", bn=8, bk=16, threads=2, outliers=0, bias=True,
         seed=2)
def test_byte_lane_gemv_matches_reference(n, k, group_size, reading, bn, bk, threads, outliers,
                                          bias, seed):
    # row and K tails (masked), both readings' step/base, outliers, bias, BN split over threads,
    # a group's bytes in one or several BK chunks (a BK over G/2 takes the whole group)
    config = dict(BYTES_GEMV, BN=bn, BK=bk, num_threads=min(threads, bn))
    _check_linear(1, n, k, group_size, min(outliers, k), reading, seed, bias=bias, config=config)


@cpu_only
def test_byte_lane_gemv_in_interpreter(monkeypatch):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    _check_linear(1, 20, 70, 32, 2, "e0m4", seed=3, config=BYTES_GEMV)
    _check_linear(1, 8, 64, 16, 0, "e4m0", seed=4, config=BYTES_GEMV)
    _check_linear(1, 5, 130, 64, 1, "e0m4", seed=5, config=dict(BYTES_GEMV, BK=8))


@cpu_only
@settings(max_examples=10, deadline=None)          # each draw compiles
@given(n=st.integers(1, 70), k=st.integers(1, 300),
       group_size=st.sampled_from((16, 32, 64, 128)), reading=st.sampled_from(fp4.READINGS),
       bn=st.sampled_from((8, 16, 32)), t=st.sampled_from((None, 1, 2, 3)),
       planes=st.booleans(), outliers=st.integers(0, 3), bias=st.booleans(),
       seed=st.integers(0, 2**16))
@example(n=576, k=576, group_size=32, reading="e0m4", bn=8, t=4, planes=True, outliers=0,
         bias=False, seed=1)                       # SmolLM2's shape, the default, EVEN
@example(n=1536, k=576, group_size=64, reading="e0m4", bn=8, t=4, planes=True, outliers=0,
         bias=False, seed=5)                       # G = 64: codes read as nibble planes, EVEN
@example(n=37, k=200, group_size=128, reading="e0m4", bn=8, t=2, planes=True, outliers=2,
         bias=True, seed=6)                        # planes with row and K tails
@example(n=1, k=1, group_size=16, reading="e0m4", bn=8, t=None, planes=True, outliers=0,
         bias=True, seed=2)
@example(n=9, k=40, group_size=16, reading="e4m0", bn=8, t=1, planes=True, outliers=1,
         bias=True, seed=3)                        # power-of-two grid: the byte-lane kernel
@example(n=20, k=64, group_size=32, reading="e0m4", bn=8, t=4, planes=False, outliers=0,
         bias=False, seed=4)                       # a program whose last tiles have no rows
def test_int16_gemv_matches_reference(n, k, group_size, reading, bn, t, planes, outliers, bias,
                                      seed):
    # integer products against x rounded to int16 per group: row and K tails, programs
    # over one or several row tiles taken in turn (t; None: one program per compute
    # unit), codes as bytes or (G a multiple of 64, planes) as 16-bit nibble planes,
    # outliers, bias
    _check_linear(1, n, k, group_size, min(outliers, k), reading, seed, bias=bias,
                  config=dict(INT16_GEMV, BN=bn, planes=planes,
                              **({"T": t} if t else {"per_cu": 1})))


@cpu_only
def test_int16_gemv_in_interpreter(monkeypatch):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    _check_linear(1, 20, 70, 32, 2, "e0m4", seed=3, config=INT16_GEMV)
    _check_linear(1, 16, 64, 16, 0, "e0m4", seed=4, config=dict(INT16_GEMV, BN=16))
    _check_linear(1, 40, 64, 32, 1, "e0m4", seed=5, config=dict(INT16_GEMV, T=3))
    _check_linear(1, 21, 150, 64, 1, "e0m4", seed=6, config=dict(INT16_GEMV, T=2))  # planes


def test_group_affine_is_the_dequantisation():
    # w = step * v(q) + base, v(q) = q (uniform reading) or m(q) (power-of-two reading)
    rng = np.random.default_rng(0)
    for reading in fp4.READINGS:
        packed = fp4.quantize(_weight(rng, 6, 64), 32, reading=reading)
        step, base = packed.group_affine()
        codes = fp4._unpack(packed.codes, 32).astype(np.float32)
        v = codes if reading == "e0m4" else fp4.mantissa_value(codes, reading)
        w = (v * step[..., None] + base[..., None]).reshape(6, 64)
        np.testing.assert_allclose(w, fp4.dequantize(packed), rtol=1e-6, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 30), k=st.integers(1, 200), group_size=st.sampled_from(fp4.GROUP_SIZES),
       reading=st.sampled_from(fp4.READINGS), seed=st.integers(0, 2**16))
def test_tiled_layout_places_each_group_where_documented(n, k, group_size, reading, seed):
    # row r's group g at block (r // T * n_groups + g) * T + r % T; padded rows are zero
    rng = np.random.default_rng(seed)
    packed = fp4.quantize(_weight(rng, n, k), group_size, reading=reading)
    codes, step, base = packed.tiled_layout()
    T, ng, half = fp4.ROW_TILE, packed.n_groups, group_size // 2
    rows = -(-n // T) * T
    assert codes.shape == (rows * ng * half,) and step.shape == base.shape == (rows * ng,)
    ref_step, ref_base = packed.group_affine()
    for r in range(rows):
        for g in range(ng):
            block = (r // T * ng + g) * T + r % T
            got = codes[block * half:(block + 1) * half]
            if r < n:
                np.testing.assert_array_equal(got, packed.codes[r, g * half:(g + 1) * half])
                assert (step[block], base[block]) == (ref_step[r, g], ref_base[r, g])
            else:
                assert not got.any() and step[block] == 0 and base[block] == 0


def test_device_arrays_upload_what_is_read():
    # a CPU reads the tiled copy, a GPU the rows: upload() makes only the device's own set
    packed = fp4.quantize(_weight(np.random.default_rng(1), 12, 64), 32)
    device = kdsl.current_device()
    arrays = packed.upload(device)
    own = ("tiled_codes", "tiled_step", "tiled_base") if device.is_cpu else ("words", "scales")
    other = ("codes", "scales", "offsets") if device.is_cpu else ("tiled_codes",)
    assert all(name in arrays for name in own) and not any(name in arrays for name in other)
    assert packed.device_arrays(device) is arrays
    with pytest.raises(KeyError, match="no device array 'nonsense'"):
        arrays["nonsense"]


@pytest.mark.parametrize("m,n,k,group_size,outliers", [(6, 20, 70, 32, 2), (8, 32, 128, 64, 0)])
def test_weight_stationary_gemm_in_interpreter(monkeypatch, m, n, k, group_size, outliers):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    _check_linear(m, n, k, group_size, outliers, "e0m4", seed=k, config=ACC_GEMM)


@settings(max_examples=6, deadline=None)           # each draw compiles; CI builds cold
@given(m=st.sampled_from([1, 3]), n=st.integers(1, 20), k=st.integers(1, 90),
       group_size=st.sampled_from([16, 32, 64]), outliers=st.sampled_from([0, 2]),
       seed=st.integers(0, 2**16))
def test_linear_matches_reference_in_interpreter(m, n, k, group_size, outliers, seed):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDSL_INTERPRET", "1")
        _check_linear(m, n, k, group_size, min(outliers, k), "e0m4", seed)


@pytest.mark.parametrize("m,n,k,group_size,outliers", [(1, 13, 70, 32, 2), (6, 9, 33, 16, 17),
                                                       (1, 8, 128, 128, 0), (16, 16, 64, 64, 0),
                                                       (1, 16, 256, 32, 0)])
def test_linear_in_interpreter(monkeypatch, m, n, k, group_size, outliers):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    _check_linear(m, n, k, group_size, outliers, "e0m4", seed=k)


@pytest.mark.parametrize("m,n,k", [(1, 576, 576), (1, 1536, 576), (64, 576, 1536),
                                   (67, 960, 576)])
def test_linear_default_config_model_shapes(m, n, k):
    rng = np.random.default_rng(n)
    w = _weight(rng, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    packed = fp4.quantize(w, 64)
    y = fp4.linear(kdsl.tensor(x), packed).numpy()
    np.testing.assert_allclose(y, x @ fp4.dequantize(packed).T, rtol=1e-4, atol=1e-3)


def test_out_view_and_strided_x():
    rng = np.random.default_rng(3)
    w = _weight(rng, 20, 64)
    packed = fp4.quantize(w, 32)
    big_x = kdsl.tensor(rng.standard_normal((4, 100)).astype(np.float32))
    x = big_x[:, 10:74]                             # rows 100 apart
    out = kdsl.zeros((4, 30))
    view = out[:, 5:25]
    result = fp4.linear(x, packed, out=view, config=SMALL_GEMM)
    ref = big_x.numpy()[:, 10:74] @ fp4.dequantize(packed).T
    np.testing.assert_allclose(result.numpy(), ref, rtol=1e-4, atol=1e-4)
    full = out.numpy()
    np.testing.assert_allclose(full[:, 5:25], ref, rtol=1e-4, atol=1e-4)
    assert (full[:, :5] == 0).all() and (full[:, 25:] == 0).all()


def test_empty_and_upload_once():
    packed = fp4.quantize(np.ones((4, 64), np.float32))
    assert fp4.linear(np.zeros((0, 64), np.float32), packed).shape == (0, 4)
    no_rows = fp4.quantize(np.zeros((0, 64), np.float32))
    assert fp4.dequantize(no_rows).shape == (0, 64)
    assert fp4.linear(np.ones((2, 64), np.float32), no_rows).shape == (2, 0)
    no_inputs = fp4.quantize(np.zeros((3, 0), np.float32))
    out = fp4.linear(np.ones((2, 0), np.float32), no_inputs, bias=np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(out.numpy(), [[0, 1, 2], [0, 1, 2]])
    fp4.linear(np.ones((1, 64), np.float32), packed)
    first = packed.device_arrays(kdsl.current_device())["codes"]
    fp4.linear(np.ones((1, 64), np.float32), packed)
    assert packed.device_arrays(kdsl.current_device())["codes"] is first


@pytest.mark.slow
def test_quantise_a_large_weight_quickly():
    import time
    w = _weight(np.random.default_rng(0), 1536, 4096)
    start = time.perf_counter()
    packed = fp4.quantize(w, 64)
    assert time.perf_counter() - start < 5.0        # 6.3M weights; a 135M model in seconds
    assert packed.nbytes < w.nbytes / 7


@settings(max_examples=5, deadline=None)          # each draw compiles; CI builds cold
@given(m=st.sampled_from((1, 1, 3)), f=st.integers(1, 24), k=st.integers(1, 200),
       group_size=st.sampled_from((16, 32, 64)), reading=st.sampled_from(fp4.READINGS),
       kind=st.sampled_from(("words", "bytes", "int16")), outliers=st.integers(0, 2),
       bias=st.booleans(), seed=st.integers(0, 2**16))
@example(m=1, f=1536, k=576, group_size=32, reading="e0m4", kind="bytes", outliers=0,
         bias=False, seed=1)                     # SmolLM2's MLP, the EVEN path
def test_swiglu_linear_matches_reference(m, f, k, group_size, reading, kind, outliers, bias,
                                         seed):
    # gate rows then up rows: silu(x Wg^T) * (x Wu^T), one launch for M = 1
    if kind != "words" and not kdsl.current_device().is_cpu:
        kind = "words"
    rng = np.random.default_rng(seed)
    w = _weight(rng, 2 * f, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(2 * f).astype(np.float32) if bias else None
    packed = fp4.quantize(w, group_size, reading=reading, outliers=min(outliers, k))
    config = dict(CPU_GEMVS.get(kind, SMALL_GEMV)) if m == 1 else SMALL_GEMM
    y = fp4.linear(kdsl.tensor(x), packed, bias=b, config=config, activation="swiglu").numpy()
    full = x @ fp4.dequantize(packed).T + (b if bias else 0)
    gate, up = full[:, :f], full[:, f:]
    np.testing.assert_allclose(y, gate / (1 + np.exp(-gate)) * up, rtol=1e-4,
                               atol=1e-4 * np.sqrt(k))


@settings(max_examples=6, deadline=None)           # each draw compiles; CI builds cold
@given(m=st.sampled_from((1, 1, 1, 3)), f=st.integers(1, 20), k=st.integers(1, 200),
       group_size=st.sampled_from((16, 32, 64)), reading=st.sampled_from(fp4.READINGS),
       kind=st.sampled_from(("words", "bytes", "int16")), gated=st.booleans(),
       norm=st.booleans(),
       accumulate=st.booleans(), outliers=st.integers(0, 2), bias=st.booleans(),
       seed=st.integers(0, 2**16))
@example(m=1, f=1536, k=576, group_size=32, reading="e0m4", kind="bytes", gated=True, norm=True,
         accumulate=False, outliers=0, bias=False, seed=1)      # SmolLM2's gate_up, EVEN
@example(m=1, f=1536, k=576, group_size=32, reading="e0m4", kind="int16", gated=True, norm=True,
         accumulate=False, outliers=1, bias=True, seed=3)       # the same, integer products
@example(m=1, f=45, k=100, group_size=32, reading="e0m4", kind="int16", gated=True, norm=True,
         accumulate=True, outliers=0, bias=False, seed=4)       # tails, up rows not aligned
@example(m=1, f=576, k=576, group_size=32, reading="e0m4", kind="words", gated=False,
         norm=False, accumulate=True, outliers=1, bias=True, seed=2)     # o_proj + residual
@example(m=1, f=14, k=167, group_size=16, reading="e0m4", kind="int16", gated=True, norm=False,
         accumulate=False, outliers=0, bias=False, seed=50450)  # x's truncation, |y| 6.6
def test_fused_norm_and_residual_match_reference(m, f, k, group_size, reading, kind, gated,
                                                 norm, accumulate, outliers, bias, seed):
    # linear(rms_norm(x, w, eps)) with the activation and out += ..., against numpy
    if kind != "words" and not kdsl.current_device().is_cpu:
        kind = "words"
    rng = np.random.default_rng(seed)
    n = 2 * f if gated else f
    packed = fp4.quantize(_weight(rng, n, k), group_size, reading=reading,
                          outliers=min(outliers, k))
    x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    g = rng.uniform(0.5, 1.5, k).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    start = rng.standard_normal((m, f)).astype(np.float32)
    out = kdsl.tensor(start)
    config = dict(CPU_GEMVS.get(kind, SMALL_GEMV)) if m == 1 else SMALL_GEMM
    fp4.linear(kdsl.tensor(x), packed, bias=b, out=out, config=config,
               activation="swiglu" if gated else None,
               rms_norm=(g, 1e-5) if norm else None, accumulate=accumulate)
    h = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5) * g if norm else x
    full = h @ fp4.dequantize(packed).T + (b if bias else 0)
    ref = full[:, :f] / (1 + np.exp(-full[:, :f])) * full[:, f:] if gated else full
    ref = ref + start if accumulate else ref
    slack = np.zeros_like(ref)
    if m == 1 and kind == "int16" and reading == "e0m4":
        # the int16 GEMV truncates x' (x times the norm weight; 1/rms scales after)
        moved = _int16_x_bound(x * g if norm else x, packed,
                               1 / np.sqrt((x * x).mean() + 1e-5) if norm else 1.0)
        if gated:
            gate, up = full[:, :f], full[:, f:]
            sig = 1 / (1 + np.exp(-gate))
            d_silu = np.abs(sig * (1 + gate * (1 - sig)))
            slack = (d_silu * np.abs(up) * moved[:, :f] + np.abs(gate * sig) * moved[:, f:]
                     + 1.1 * moved[:, :f] * moved[:, f:])
        else:
            slack = moved
    err = np.abs(out.numpy() - ref)
    assert (err <= 1e-4 * np.sqrt(k) + 1e-4 * np.abs(ref) + slack).all(), err.max()


def test_fused_norm_in_interpreter(monkeypatch):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    rng = np.random.default_rng(8)
    packed = fp4.quantize(_weight(rng, 12, 40), 16, outliers=1)
    x = rng.standard_normal((1, 40)).astype(np.float32)
    g = rng.uniform(0.5, 1.5, 40).astype(np.float32)
    out = kdsl.tensor(np.ones((1, 6), np.float32))
    fp4.linear(kdsl.tensor(x), packed, out=out, config=SMALL_GEMV, activation="swiglu",
               rms_norm=(g, 1e-6), accumulate=True)
    full = (x / np.sqrt((x * x).mean() + 1e-6) * g) @ fp4.dequantize(packed).T
    ref = 1 + full[:, :6] / (1 + np.exp(-full[:, :6])) * full[:, 6:]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_fused_forms_reject_bad_arguments():
    packed = fp4.quantize(np.ones((4, 64), np.float32))
    x = np.ones((1, 64), np.float32)
    with pytest.raises(ValueError, match="rms_norm weight must be float32 \\(64,\\)"):
        fp4.linear(x, packed, rms_norm=(np.ones(63, np.float32), 1e-6))
    with pytest.raises(ValueError, match="pair"):
        fp4.linear(x, packed, rms_norm=np.ones(64, np.float32))
    with pytest.raises(ValueError, match="accumulate=True adds into `out`"):
        fp4.linear(x, packed, accumulate=True)


def test_swiglu_linear_in_interpreter(monkeypatch):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    rng = np.random.default_rng(7)
    packed = fp4.quantize(_weight(rng, 12, 40), 16)
    x = rng.standard_normal((1, 40)).astype(np.float32)
    y = fp4.linear(kdsl.tensor(x), packed, config=SMALL_GEMV, activation="swiglu").numpy()
    full = x @ fp4.dequantize(packed).T
    np.testing.assert_allclose(y, full[:, :6] / (1 + np.exp(-full[:, :6])) * full[:, 6:],
                               rtol=1e-4, atol=1e-4)


def test_swiglu_linear_rejects_bad_arguments():
    packed = fp4.quantize(np.ones((5, 32), np.float32), 32)
    with pytest.raises(ValueError, match="even row count"):
        fp4.linear(np.ones((1, 32), np.float32), packed, activation="swiglu")
    with pytest.raises(ValueError, match="unknown activation"):
        fp4.linear(np.ones((1, 32), np.float32), packed, activation="gelu")
    even = fp4.quantize(np.ones((6, 32), np.float32), 32)
    with pytest.raises(ValueError, match=r"out must be float32 \(1, 3\)"):
        fp4.linear(np.ones((1, 32), np.float32), even, out=kdsl.empty((1, 6)),
                   activation="swiglu")


@pytest.mark.parametrize("bn,f", [(4, 12), (8, 20), (16, 24), (16, 16), (2, 7)])
def test_byte_gemv_rows_straddling_tiles(bn, f):
    # the up half of a gated weight starts at row f: where f is not a multiple of
    # the row tile, programs' rows straddle tiles and the per-row block form runs
    from kdsl_kernels.fp4_kernels import _tile_aligned
    if not kdsl.current_device().is_cpu:
        pytest.skip("the byte-lane GEMV is the CPU kernel")
    assert _tile_aligned(bn) and _tile_aligned(bn, f) == (f % min(bn, fp4.ROW_TILE) == 0)
    rng = np.random.default_rng(bn + f)
    packed = fp4.quantize(_weight(rng, 2 * f, 96), 32)
    x = rng.standard_normal((1, 96)).astype(np.float32)
    out = fp4.linear(kdsl.tensor(x), packed, activation="swiglu",
                     config={"BN": bn, "BK": 16, "lanes": "bytes", "num_threads": 1}).numpy()
    full = x @ fp4.dequantize(packed).T
    ref = full[:, :f] / (1 + np.exp(-full[:, :f])) * full[:, f:]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.sqrt(96))


@pytest.mark.parametrize("reading", ["e0m4", "e4m0"])
def test_quantising_in_row_chunks_gives_the_same_pack(monkeypatch, reading):
    # quantize() fits row chunks on threads; every group's fit is its own, so
    # the packs match bit for bit whatever the chunk size
    w = (np.random.default_rng(7).standard_normal((37, 200)) * 0.1).astype(np.float32)
    w[4] = 0.0
    whole = fp4.quantize(w, 32, reading=reading, outliers=2)
    monkeypatch.setattr(fp4, "CHUNK_ELEMENTS", 3 * 224)        # 3 rows a chunk
    chunked = fp4.quantize(w, 32, reading=reading, outliers=2)
    for name in ("codes", "scales", "offsets", "outlier_idx", "outlier_w"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
