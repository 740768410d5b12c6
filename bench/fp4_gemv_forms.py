"""Where the FP4 GEMV's time goes: kdsl's kernel beside hand-written forms of the same layout.

    python3 bench/fp4_gemv_forms.py            # large shapes (a GPU's), about a minute
    python3 bench/fp4_gemv_forms.py --quick    # small shapes, a few seconds (PoCL smoke run)
    python3 bench/fp4_gemv_forms.py --ptx DIR  # also each form's PTX and machine-code summary

The packed weights are kdsl_kernels.fp4's (codes two per byte, an fp16 scale
and offset per group; word w of a group holds elements 4w..4w+3 in its low
nibbles and G/2 + 4w.. in its high ones). Each shape is timed, device time,
for:

- kdsl: `fp4.linear`'s GEMV with its default config (the language's kernel);
- kdsl idot16 / idot8: the language's integer-product GEMV
  (kdsl_kernels/fp4_idot.py) with x as int16 / int8, the best of a few tile
  configs; its time includes the x quantiser's launch (device times summed);
- vec: hand-written OpenCL in which a work-item takes whole groups, one
  16-byte vector load of codes per group and row, x as float4 loads shared by
  BN rows, m(q) from bit patterns and the group's scale and offset applied
  once per group (s * sum(m x) + o * sum(x)); several BN / work-group sizes,
  the best shown;
- rows: hand-written, a work-item owns whole groups of R rows, every row's
  codes loaded before any arithmetic, one FMA per product; m(q) from bits
  or the code masked in place and converted (x scaled by 2^-p to match);
- idot: integer dot products, as llama.cpp's CUDA GEMV takes them: x
  scaled per group to int8 (dp4a: 4 byte products per instruction) or
  int16 (dp2a: 2 products, the numerics of kdsl's CPU GEMV), by a separate
  kernel timed on its own (the `x int8 s` and `x int16 s` columns); each work-item takes whole groups of R
  rows, 16-byte loads of codes, and applies the group's scale and offset
  once to the integer sum. Through inline PTX where the device compiles it
  (kdsl.device_features.has_inline_ptx), else the same products written in
  C; checked against x rounded as the kernel rounds it (the int8 form's
  error against the float x is printed: it is the price of its speed);
- read: the same walk over codes, scales and offsets with no arithmetic, the
  ceiling a kernel reading this layout can reach.

With --ptx DIR on an NVIDIA device the PTX of kdsl's kernel and of the rows
forms is written to DIR; where the CUDA toolkit's ptxas and cuobjdump are on
PATH (the lent GPU machine has them), each is assembled for the device's
sm_XY and summarised: registers, spills, instruction count and the most
frequent opcodes (how the FP4 GEMV's FMUL + FFMA + FADD per code pair was
found, docs/fp4.md).

GB/s count the packed bytes (codes + scales + offsets) once; the ratios are
against the float4 copy bandwidth measured in the same run. kdsl far below
vec or rows says the language's code is the limit; those far below read
say the arithmetic is; read far below copy says the layout's reads are. The
kernel-language form of whatever wins belongs in kdsl_kernels/fp4_kernels.py.

The hand-written forms are GPU forms (a work-group of T work-items per BN
rows, reduced through local memory): on a CPU they run and are checked
against numpy, but are no measure of what a CPU can do. On the lent GPU:
`BENCHES=fp4_gemv_forms FP4_GEMV_FORMS_ARGS="--no-plot --ptx /tmp/ptx" bash
.device/on-device.sh bash bench/device_run.sh`.
"""
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's kdsl and bench

import numpy as np
import pyopencl as cl

import kdsl
from bench import common
from kdsl_kernels import fp4
from kdsl import autotuner
from kdsl.launch import compile_kernel
from kdsl_kernels.fp4_kernels import launch_fp4

SHAPES = [(16384, 8192, 32), (16384, 8192, 64), (11008, 4096, 32), (11008, 4096, 64),
          (4096, 4096, 32)]
QUICK_SHAPES = [(512, 1024, 32), (256, 576, 32)]
FORMS = [(4, 128), (4, 256), (8, 128), (2, 256), (1, 256)]       # (BN, work-group size)
ROW_FORMS = [(8, 128), (16, 128), (8, 256)]                       # (R, work-group size)
EXTRACTS = {0: "bits", 1: "masked conversion"}
FORM_NAMES = ("kdsl", "kidot16", "kidot8", "vec", "rows", "dp4a", "dp2a", "read")
KDSL_IDOT_TILES = [(4, 64, 64), (2, 128, 128), (4, 128, 128), (8, 128, 128), (8, 64, 64)]

HELPERS = r"""
#define QW (G / 8)

inline float m_of(uint c, int shift) { return as_float(((c >> shift) & 15u) << 19 | 0x3F800000u); }

/* group g's G elements of x into xs (float4 loads); returns their sum */
inline float group_x(__global const float* x, int g, float* xs)
{
    float sx = 0.0f;
    __global const float4* xp = (__global const float4*)(x + g * G);
    for (int i = 0; i < G / 4; i++) {
        const float4 v = xp[i];
        xs[4 * i] = v.x; xs[4 * i + 1] = v.y; xs[4 * i + 2] = v.z; xs[4 * i + 3] = v.w;
        sx += (v.x + v.y) + (v.z + v.w);
    }
    return sx;
}

/* y[r0 + r] = the work-group's sum of acc[r] for the n rows, through part[n * T] */
inline void store_row_sums(const float* acc, int n, __local float* part, int lid,
                           __global float* y, int r0)
{
    for (int r = 0; r < n; r++) part[r * T + lid] = acc[r];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = T / 2; h > 0; h >>= 1) {
        if (lid < h)
            for (int r = 0; r < n; r++) part[r * T + lid] += part[r * T + lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid < n) y[r0 + lid] = part[lid * T];
}

#ifdef R
/* the codes (16-byte loads), scale and offset of group g of rows r0 .. r0 + R - 1 */
inline void load_group_rows(__global const uint* words, __global const half* scales,
                            __global const half* offsets, int r0, int g, int n_groups,
                            uint4 cw[R][QW / 4], float* s, float* o)
{
    for (int r = 0; r < R; r++) {
        const size_t base = (size_t)(r0 + r) * n_groups + g;
        for (int j = 0; j < QW / 4; j++) cw[r][j] = ((__global const uint4*)(words + base * QW))[j];
        s[r] = vload_half(base, scales);
        o[r] = vload_half(base, offsets);
    }
}
#endif
"""

SOURCE = HELPERS + r"""
__kernel __attribute__((reqd_work_group_size(T, 1, 1)))
void gemv_vec(__global const float* x, __global const uint* words, __global const half* scales,
              __global const half* offsets, __global float* y, int K)
{
    const int lid = get_local_id(0);
    const int n_groups = K / G;
    const int r0 = get_group_id(0) * BN;
    float acc[BN];
    for (int r = 0; r < BN; r++) acc[r] = 0.0f;
    for (int g = lid; g < n_groups; g += T) {
        float xs[G];
        const float sx = group_x(x, g, xs);
        for (int r = 0; r < BN; r++) {
            const int row = r0 + r;
            __global const uint4* wp = (__global const uint4*)(words + ((size_t)row * n_groups + g) * QW);
            float t = 0.0f;
            for (int j = 0; j < QW / 4; j++) {
                const uint4 cv = wp[j];
                const uint c[4] = {cv.x, cv.y, cv.z, cv.w};
                for (int w = 0; w < 4; w++)
                    for (int b = 0; b < 4; b++)
                        t += m_of(c[w], 8 * b) * xs[16 * j + 4 * w + b]
                           + m_of(c[w], 8 * b + 4) * xs[G / 2 + 16 * j + 4 * w + b];
            }
            acc[r] += vload_half(row * n_groups + g, scales) * t
                    + vload_half(row * n_groups + g, offsets) * sx;
        }
    }
    __local float partial[BN * T];
    store_row_sums(acc, BN, partial, lid, y, r0);
}

#ifdef R
#ifndef EXTRACT
#define EXTRACT 0
#endif
/* rows: a work-item owns whole groups of every one of R rows (x for them in
   registers); all R rows' codes are loaded before any arithmetic, and each
   product is one FMA. EXTRACT 0: m(q) from bits, s * sum(m x) + o * sum(x);
   EXTRACT 1: q * 2^p masked in place and converted, x scaled by 2^-p,
   (s/16) * sum(q x) + (s + o) * sum(x). */
__kernel __attribute__((reqd_work_group_size(T, 1, 1)))
void gemv_rows(__global const float* x, __global const uint* words, __global const half* scales,
               __global const half* offsets, __global float* y, int K)
{
    const int lid = get_local_id(0);
    const int n_groups = K / G;
    const int r0 = get_group_id(0) * R;
    float acc[R];
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int g = lid; g < n_groups; g += T) {
        uint4 cw[R][QW / 4];
        float s[R], o[R];
        load_group_rows(words, scales, offsets, r0, g, n_groups, cw, s, o);
        float xs[G];
        const float sx = group_x(x, g, xs);
#if EXTRACT == 1
        for (int w = 0; w < QW; w++)
            for (int b = 0; b < 4; b++) {
                xs[4 * w + b] *= 1.0f / (float)(1u << (8 * b));
                xs[G / 2 + 4 * w + b] *= 1.0f / (float)(1u << (8 * b + 4));
            }
#endif
        for (int r = 0; r < R; r++) {
            float t = 0.0f;
            for (int j = 0; j < QW / 4; j++) {
                const uint c[4] = {cw[r][j].x, cw[r][j].y, cw[r][j].z, cw[r][j].w};
                for (int w = 0; w < 4; w++)
                    for (int b = 0; b < 4; b++) {
#if EXTRACT == 1
                        t = fma((float)(c[w] & (15u << (8 * b))), xs[16 * j + 4 * w + b], t);
                        t = fma((float)(c[w] & (15u << (8 * b + 4))), xs[G / 2 + 16 * j + 4 * w + b], t);
#else
                        t = fma(m_of(c[w], 8 * b), xs[16 * j + 4 * w + b], t);
                        t = fma(m_of(c[w], 8 * b + 4), xs[G / 2 + 16 * j + 4 * w + b], t);
#endif
                    }
            }
#if EXTRACT == 1
            acc[r] += s[r] * 0.0625f * t + (s[r] + o[r]) * sx;
#else
            acc[r] += s[r] * t + o[r] * sx;
#endif
        }
    }
    __local float partial[R * T];
    store_row_sums(acc, R, partial, lid, y, r0);
}
#endif

__kernel __attribute__((reqd_work_group_size(T, 1, 1)))
void read_only_walk(__global const float* x, __global const uint* words,
                    __global const half* scales, __global const half* offsets,
                    __global float* y, int K)
{
    const int lid = get_local_id(0);
    const int n_groups = K / G;
    const int r0 = get_group_id(0) * BN;
    uint bits = 0;
    float f = 0.0f;
    for (int g = lid; g < n_groups; g += T)
        for (int r = 0; r < BN; r++) {
            const int row = r0 + r;
            __global const uint4* wp = (__global const uint4*)(words + ((size_t)row * n_groups + g) * QW);
            for (int j = 0; j < QW / 4; j++) {
                const uint4 cv = wp[j];
                bits ^= cv.x ^ cv.y ^ cv.z ^ cv.w;
            }
            f += vload_half(row * n_groups + g, scales) + vload_half(row * n_groups + g, offsets);
        }
    if (bits == 0x9E3779B9u && f == 1.5f) y[r0] = 1.0f;      /* keeps the reads alive */
}
"""

IDOT_SOURCE = HELPERS + r"""
#define XW (G / XPW)                  /* words of quantised x per group */
/* d + a . b, a: 4 x u8, b: 4 x s8 (dp4a) */
inline int dot4(uint a, uint b, int d) {
#if USE_PTX
    int r; asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(d)); return r;
#else
    return d + (int)(a & 255u) * (int)(char)b + (int)((a >> 8) & 255u) * (int)(char)(b >> 8)
             + (int)((a >> 16) & 255u) * (int)(char)(b >> 16) + (int)(a >> 24) * (int)(char)(b >> 24);
#endif
}
/* d + a . (bytes 0, 1 of b) (dp2a.lo) and (bytes 2, 3) (dp2a.hi), a: 2 x s16 */
inline int dot2lo(uint a, uint b, int d) {
#if USE_PTX
    int r; asm("dp2a.lo.s32.u32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(d)); return r;
#else
    return d + (int)(short)a * (int)(b & 255u) + (int)(short)(a >> 16) * (int)((b >> 8) & 255u);
#endif
}
inline int dot2hi(uint a, uint b, int d) {
#if USE_PTX
    int r; asm("dp2a.hi.s32.u32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(d)); return r;
#else
    return d + (int)(short)a * (int)((b >> 16) & 255u) + (int)(short)(a >> 16) * (int)(b >> 24);
#endif
}

/* x per group as integers: one work-group of G/4 work-items per group, each
   four elements; xq packs XPW of them per word (XPW = 4: int8, 2: int16),
   xd the group's step (max|x| / XMAX), xs its exact sum */
__kernel __attribute__((reqd_work_group_size(G / 4, 1, 1)))
void quantize_x(__global const float* x, __global uint* xq, __global float* xd,
                __global float* xs)
{
    __local float part_max[G / 4], part_sum[G / 4];
    const int g = get_group_id(0), lid = get_local_id(0);
    const float4 v = vload4(g * (G / 4) + lid, x);
    part_max[lid] = fmax(fmax(fabs(v.x), fabs(v.y)), fmax(fabs(v.z), fabs(v.w)));
    part_sum[lid] = (v.x + v.y) + (v.z + v.w);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = G / 8; h > 0; h >>= 1) {
        if (lid < h) {
            part_max[lid] = fmax(part_max[lid], part_max[lid + h]);
            part_sum[lid] += part_sum[lid + h];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float d = part_max[0] / XMAX, inv = d > 0.0f ? 1.0f / d : 0.0f;
    const int4 q = convert_int4_rte(v * inv);
#if XPW == 4
    xq[g * XW + lid] = (q.x & 255) | (q.y & 255) << 8 | (q.z & 255) << 16 | (uint)q.w << 24;
#else
    xq[g * XW + 2 * lid] = (q.x & 65535) | (uint)q.y << 16;
    xq[g * XW + 2 * lid + 1] = (q.z & 65535) | (uint)q.w << 16;
#endif
    if (lid == 0) { xd[g] = d; xs[g] = part_sum[0]; }
}

/* y = W x for R rows per work-group of T: work-item lid takes groups lid,
   lid + T, ...; per group and row the codes' integer dot with xq, then
   y += (s/16) d dot + (s + o) sum(x)  (w = s (1 + q/16) + o) */
__kernel __attribute__((reqd_work_group_size(T, 1, 1)))
void gemv_idot(__global const uint* xq, __global const float* xd, __global const float* xs,
               __global const uint* words, __global const half* scales,
               __global const half* offsets, __global float* y, int K)
{
    const int lid = get_local_id(0);
    const int n_groups = K / G;
    const int r0 = get_group_id(0) * R;
    float acc[R];
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int g = lid; g < n_groups; g += T) {
        uint4 cw[R][QW / 4];
        float s[R], o[R];
        load_group_rows(words, scales, offsets, r0, g, n_groups, cw, s, o);
        uint xw[XW];
        for (int j = 0; j < XW / 4; j++) {
            const uint4 v = ((__global const uint4*)(xq + g * XW))[j];
            xw[4 * j] = v.x; xw[4 * j + 1] = v.y; xw[4 * j + 2] = v.z; xw[4 * j + 3] = v.w;
        }
        const float d = xd[g] * 0.0625f, sx = xs[g];
        for (int r = 0; r < R; r++) {
            int t = 0;
            for (int j = 0; j < QW / 4; j++) {
                const uint c[4] = {cw[r][j].x, cw[r][j].y, cw[r][j].z, cw[r][j].w};
                for (int i = 0; i < 4; i++) {
                    const int w = 4 * j + i;           /* elements 4w.. and G/2 + 4w.. */
                    const uint lo = c[i] & 0x0F0F0F0Fu, hi = (c[i] >> 4) & 0x0F0F0F0Fu;
#if XPW == 4
                    t = dot4(lo, xw[w], t);
                    t = dot4(hi, xw[QW + w], t);
#else
                    t = dot2lo(xw[2 * w], lo, t);
                    t = dot2hi(xw[2 * w + 1], lo, t);
                    t = dot2lo(xw[2 * QW + 2 * w], hi, t);
                    t = dot2hi(xw[2 * QW + 2 * w + 1], hi, t);
#endif
                }
            }
            acc[r] = fma(s[r] * d, (float)t, fma(s[r] + o[r], sx, acc[r]));
        }
    }
    __local float partial[R * T];
    store_row_sums(acc, R, partial, lid, y, r0);
}
"""
IDOT_FORMS = [(4, 64), (4, 128), (8, 64), (16, 64)]            # (R, work-group size)
IDOT_X = {"dp4a": (4, 127.0), "dp2a": (2, 32767.0)}             # x values per word, largest |xq|


def measure(device, N, K, G, rng, ptx_dir=None, report=None):
    w = rng.standard_normal((N, K)).astype(np.float32)
    packed = fp4.quantize(w, group_size=G)
    x = kdsl.tensor(rng.standard_normal((1, K)).astype(np.float32), device=device)
    y = kdsl.empty((1, N), device=device)
    nbytes = packed.codes.nbytes + packed.scales.nbytes + packed.offsets.nbytes
    ref = (x.numpy() @ fp4.dequantize(packed).T)[0]
    tolerance = 1e-4 * np.abs(ref).max() * np.sqrt(K)

    def checked(name):
        error = np.abs(y.numpy()[0] - ref).max()
        if error > tolerance:
            raise AssertionError(f"{name} at {N}x{K} G={G}: max error {error:.3g}")

    row = {"N": N, "K": K, "G": G, "packed_bytes": nbytes}
    with kdsl.capture_launches() as launches:
        row["kdsl_s"] = common.time_launch(lambda: launch_fp4(x, packed, y)).device_s
    checked("kdsl")
    if ptx_dir is not None:
        rec = launches[0]
        compiled = compile_kernel(rec.jit_fn, rec.values, rec.num_threads, device)
        report["kdsl"] = machine_code(compiled.program, f"kdsl_{N}x{K}_G{G}", ptx_dir, device)
    for xbits in (16, 8):
        best_idot = None
        for bn, bw, threads in KDSL_IDOT_TILES:
            if threads > device.max_work_group_size:
                continue
            cfg = {"BN": bn, "BW": bw, "lanes": "idot", "XBITS": xbits, "num_threads": threads}
            t = autotuner.time_call(lambda: launch_fp4(x, packed, y, None, cfg), warmup=1,
                                    rep=10, max_time_s=0.3)
            error = float(np.abs(y.numpy()[0] - ref).max() / np.abs(ref).max())
            if xbits == 16:
                checked(f"kdsl idot16 {cfg}")
            if best_idot is None or t < best_idot[0]:
                best_idot = (t, f"BN={bn} BW={bw} T={threads}", error)
        name = f"kidot{xbits}"
        row[f"{name}_s"], row[f"{name}_form"], row[f"{name}_err"] = best_idot
    arrays = packed.device_arrays(device)
    buffers = (x.buffer, arrays["words"].buffer, arrays["scales"].buffer,
               arrays["offsets"].buffer, y.buffer)
    best = {}
    for bn, threads in FORMS:
        if N % bn or threads > device.max_work_group_size:
            continue
        program = cl.Program(device.context, SOURCE).build(
            options=f"-DG={G} -DBN={bn} -DT={threads}")
        for name in ("gemv_vec", "read_only_walk"):
            kernel = cl.Kernel(program, name)
            kernel.set_args(*buffers, np.int32(K))
            t = common.time_launch(lambda: cl.enqueue_nd_range_kernel(
                device.queue, kernel, (N // bn * threads,), (threads,))).device_s
            if name == "gemv_vec":
                checked(f"vec BN={bn} T={threads}")
            if name not in best or t < best[name][0]:
                best[name] = (t, f"BN={bn} T={threads}")
    for r, threads in ROW_FORMS:
        if N % r or threads > device.max_work_group_size:
            continue
        for extract, label in EXTRACTS.items():
            program = cl.Program(device.context, SOURCE).build(
                options=f"-DG={G} -DBN={r} -DR={r} -DT={threads} -DEXTRACT={extract}")
            kernel = cl.Kernel(program, "gemv_rows")
            kernel.set_args(*buffers, np.int32(K))
            t = common.time_launch(lambda: cl.enqueue_nd_range_kernel(
                device.queue, kernel, (N // r * threads,), (threads,))).device_s
            form = f"R={r} T={threads} {label}"
            checked(f"rows {form}")
            if ptx_dir is not None and f"rows {form}" not in report:
                report[f"rows {form}"] = machine_code(
                    program, f"rows_R{r}_T{threads}_E{extract}_G{G}", ptx_dir, device)
            if "gemv_rows" not in best or t < best["gemv_rows"][0]:
                best["gemv_rows"] = (t, form)
    for name, (t, form, xq_s, error) in idot_forms(device, packed, x, y, ref).items():
        row[f"{name}_s"], row[f"{name}_form"], row[f"{name}_xq_s"] = t, form, xq_s
        row[f"{name}_err"] = error
    row["vec_s"], row["vec_form"] = best["gemv_vec"]
    row["rows_s"], row["rows_form"] = best["gemv_rows"]
    row["read_s"], row["read_form"] = best["read_only_walk"]
    return row


def idot_reference(packed, x, per_word, xmax):
    """y of the integer-dot forms, in float64: x rounded per group as
    quantize_x rounds it (float32 steps, round half to even) in the (s/16) q
    term, the exact sum of x in the (s + o) term."""
    N = packed.shape[0]
    G = packed.group_size
    xg = x.reshape(-1, G)
    d = (np.abs(xg).max(axis=1) / np.float32(xmax)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    x_hat = (np.rint(xg * inv[:, None]) * d[:, None]).astype(np.float64)
    q = fp4._unpack(packed.codes, G).astype(np.float64)          # [N, n_groups, G]
    s = packed.scales.astype(np.float64)
    o = packed.offsets.astype(np.float64)
    return ((s / 16) * np.einsum("ngk,gk->ng", q, x_hat)
            + (s + o) * xg.astype(np.float64).sum(axis=1)).sum(axis=1)


def idot_forms(device, packed, x, y, exact):
    """{name: (best device seconds, its form, x quantisation seconds, max error
    against the float x, whose product `exact` measure() computed)} of the
    dp4a and dp2a forms (IDOT_SOURCE)."""
    from kdsl.device_features import has_inline_ptx
    (N, K), G = packed.shape, packed.group_size
    ptx = int(has_inline_ptx(device))
    arrays = packed.device_arrays(device)
    n_groups = K // G
    flags = cl.mem_flags.READ_WRITE
    xq = cl.Buffer(device.context, flags, 2 * K)
    xd = cl.Buffer(device.context, flags, 4 * n_groups)
    xs = cl.Buffer(device.context, flags, 4 * n_groups)
    out = {}
    for name, (per_word, xmax) in IDOT_X.items():
        ref = idot_reference(packed, x.numpy()[0], per_word, xmax)
        tolerance = 1e-4 * np.abs(ref).max() * np.sqrt(K)
        best = None
        for r, threads in IDOT_FORMS:
            if N % r or threads > device.max_work_group_size or G // 4 > device.max_work_group_size:
                continue
            program = cl.Program(device.context, IDOT_SOURCE).build(
                options=f"-DG={G} -DR={r} -DT={threads} -DXPW={per_word} "
                        f"-DXMAX={xmax:.1f}f -DUSE_PTX={ptx}")
            quant = cl.Kernel(program, "quantize_x")
            quant.set_args(x.buffer, xq, xd, xs)
            gemv = cl.Kernel(program, "gemv_idot")
            gemv.set_args(xq, xd, xs, arrays["words"].buffer, arrays["scales"].buffer,
                          arrays["offsets"].buffer, y.buffer, np.int32(K))
            xq_s = common.time_launch(lambda: cl.enqueue_nd_range_kernel(
                device.queue, quant, (n_groups * (G // 4),), (G // 4,))).device_s
            t = common.time_launch(lambda: cl.enqueue_nd_range_kernel(
                device.queue, gemv, (N // r * threads,), (threads,))).device_s
            got = y.numpy()[0]
            form = f"R={r} T={threads} {'ptx' if ptx else 'C'}"
            if np.abs(got - ref).max() > tolerance:
                raise AssertionError(f"{name} {form} at {N}x{K} G={G}: max error "
                                     f"{np.abs(got - ref).max():.3g} against its rounded x")
            if best is None or t < best[0]:
                best = (t, form, xq_s, float(np.abs(got - exact).max() / np.abs(exact).max()))
        if best is not None:
            out[name] = best
    return out


def machine_code(program, name, out_dir, device):
    """Write the program's binary to out_dir/name.ptx where it is PTX (NVIDIA's
    OpenCL returns the PTX it compiled), and with `ptxas` and `cuobjdump` on
    PATH (the CUDA toolkit) summarise the machine code: registers, spills,
    instruction count and the most frequent opcodes. None on other devices."""
    binary = bytes(program.get_info(cl.program_info.BINARIES)[0]).rstrip(b"\0")
    if not binary.lstrip().startswith(b"//"):            # PTX text opens with a comment
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    ptx = out_dir / f"{name}.ptx"
    ptx.write_bytes(binary)
    ptxas, cuobjdump = shutil.which("ptxas"), shutil.which("cuobjdump")
    if ptxas is None or cuobjdump is None:
        return f"{ptx} (no ptxas/cuobjdump on PATH)"
    cc = device.cl_device
    arch = f"sm_{cc.compute_capability_major_nv}{cc.compute_capability_minor_nv}"
    cubin = ptx.with_suffix(".cubin")
    info = subprocess.run([ptxas, f"-arch={arch}", "-v", str(ptx), "-o", str(cubin)],
                          capture_output=True, text=True)
    if info.returncode:
        return f"{ptx}: ptxas failed: {info.stderr.strip()[:200]}"
    registers = re.search(r"Used (\d+) registers", info.stderr)
    spills = re.search(r"(\d+) bytes spill stores", info.stderr)
    sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True,
                          text=True).stdout
    opcodes = collections.Counter(re.findall(
        r"^\s+/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z0-9_]+)", sass, re.MULTILINE))
    top = ", ".join(f"{op} {n}" for op, n in opcodes.most_common(8))
    return (f"{registers.group(1) if registers else '?'} registers, "
            f"{spills.group(1) if spills else '?'} B spilled, "
            f"{sum(opcodes.values())} instructions: {top}")


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv, extra=[(
        ("--ptx",), {"metavar": "DIR", "type": Path,
                     "help": "write each form's PTX there (NVIDIA) and, with the CUDA "
                             "toolkit's ptxas and cuobjdump on PATH, print its registers "
                             "and instruction mix"})])
    device = kdsl.current_device()
    copy_gbps = common.device_header(device, args.quick)
    rng = np.random.default_rng(0)
    rows, report = [], {}
    for N, K, G in (QUICK_SHAPES if args.quick else SHAPES):
        row = measure(device, N, K, G, rng, args.ptx, report)
        for form in FORM_NAMES:
            row[f"{form}_gbps"] = common.gbps(row["packed_bytes"], row[f"{form}_s"])
            row[f"{form}_of_copy"] = row[f"{form}_gbps"] / copy_gbps
        row["shape"] = f"{N}x{K} G{G}"
        rows.append(row)
    common.print_table(rows, [
        ("shape", "shape", "{}"),
        ("kdsl_gbps", "kdsl GB/s", "{:.1f}"), ("kdsl_of_copy", "of copy", "{:.2f}"),
        ("kidot16_of_copy", "kdsl idot16 of copy", "{:.2f}"),
        ("kidot16_form", "idot16 form", "{}"),
        ("kidot8_of_copy", "kdsl idot8 of copy", "{:.2f}"),
        ("kidot8_err", "idot8 err", "{:.1e}"),
        ("vec_gbps", "vec GB/s", "{:.1f}"), ("vec_of_copy", "of copy", "{:.2f}"),
        ("vec_form", "vec form", "{}"),
        ("rows_gbps", "rows GB/s", "{:.1f}"), ("rows_of_copy", "of copy", "{:.2f}"),
        ("rows_form", "rows form", "{}"),
        ("dp4a_of_copy", "dp4a of copy", "{:.2f}"), ("dp4a_xq_s", "x int8 s", "{:.2e}"),
        ("dp4a_err", "dp4a err", "{:.1e}"), ("dp4a_form", "dp4a form", "{}"),
        ("dp2a_of_copy", "dp2a of copy", "{:.2f}"), ("dp2a_xq_s", "x int16 s", "{:.2e}"),
        ("dp2a_err", "dp2a err", "{:.1e}"), ("dp2a_form", "dp2a form", "{}"),
        ("read_gbps", "read GB/s", "{:.1f}"), ("read_of_copy", "of copy", "{:.2f}")])
    for row in rows:
        print(f"{row['shape']}: kdsl / rows {row['rows_s'] / row['kdsl_s']:.2f}, "
              f"rows / read {row['read_s'] / row['rows_s']:.2f}")
    if args.ptx is not None:
        print(f"\nmachine code ({args.ptx}):")
        for name, summary in report.items():
            print(f"  {name}: {summary or 'no PTX (not an NVIDIA device)'}")
    path = common.write_results("fp4_gemv_forms", device, rows,
                                extra={"copy_gbps": copy_gbps}, path=args.json)
    print(f"wrote {path}")
    if not args.no_plot:
        xs = [row["N"] * row["K"] for row in rows]
        series = {form: (xs, [row[f"{form}_gbps"] for row in rows])
                  for form in FORM_NAMES}
        plotted = common.plot_results(path.with_suffix(".png"),
                                      f"FP4 GEMV forms on {device.name}", series,
                                      "weights (N x K)", "GB/s of packed bytes",
                                      roofline=(copy_gbps, "float4 copy"))
        if plotted:
            print(f"wrote {plotted}")


if __name__ == "__main__":
    main()
