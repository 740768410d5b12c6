"""Where the FP4 GEMV's time goes: kdsl's kernel beside hand-written forms of the same layout.

    python3 bench/fp4_gemv_forms.py            # large shapes (a GPU's), about a minute
    python3 bench/fp4_gemv_forms.py --quick    # small shapes, a few seconds (PoCL smoke run)
    python3 bench/fp4_gemv_forms.py --ptx DIR  # also each form's PTX and machine-code summary

The packed weights are kdsl_kernels.fp4's (codes two per byte, an fp16 scale
and offset per group; word w of a group holds elements 4w..4w+3 in its low
nibbles and G/2 + 4w.. in its high ones). Each shape is timed, device time,
for:

- kdsl: `fp4.linear`'s GEMV with its default config (the language's kernel);
- vec: hand-written OpenCL in which a work-item takes whole groups, one
  16-byte vector load of codes per group and row, x as float4 loads shared by
  BN rows, m(q) from bit patterns and the group's scale and offset applied
  once per group (s * sum(m x) + o * sum(x)); several BN / work-group sizes,
  the best shown;
- rows: hand-written, a work-item owns whole groups of R rows, every row's
  codes loaded before any arithmetic, one FMA per product; m(q) from bits
  or the code masked in place and converted (x scaled by 2^-p to match);
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
from kdsl.launch import compile_kernel
from kdsl_kernels.fp4_kernels import launch_fp4

SHAPES = [(16384, 8192, 32), (16384, 8192, 64), (11008, 4096, 32), (4096, 4096, 32)]
QUICK_SHAPES = [(512, 1024, 32), (256, 576, 32)]
FORMS = [(4, 128), (4, 256), (8, 128), (2, 256), (1, 256)]       # (BN, work-group size)
ROW_FORMS = [(8, 128), (16, 128), (8, 256)]                       # (R, work-group size)
EXTRACTS = {0: "bits", 1: "masked conversion"}
FORM_NAMES = ("kdsl", "vec", "rows", "read")

SOURCE = r"""
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
        for (int r = 0; r < R; r++) {
            const size_t base = (size_t)(r0 + r) * n_groups + g;
            for (int j = 0; j < QW / 4; j++) cw[r][j] = ((__global const uint4*)(words + base * QW))[j];
            s[r] = vload_half(base, scales);
            o[r] = vload_half(base, offsets);
        }
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
    row["vec_s"], row["vec_form"] = best["gemv_vec"]
    row["rows_s"], row["rows_form"] = best["gemv_rows"]
    row["read_s"], row["read_form"] = best["read_only_walk"]
    return row


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
        ("vec_gbps", "vec GB/s", "{:.1f}"), ("vec_of_copy", "of copy", "{:.2f}"),
        ("vec_form", "vec form", "{}"),
        ("rows_gbps", "rows GB/s", "{:.1f}"), ("rows_of_copy", "of copy", "{:.2f}"),
        ("rows_form", "rows form", "{}"),
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
