"""Work-arounds for OpenCL driver behaviour, applied before a platform's devices start.

PoCL 3.x built on LLVM 15 (Debian 12's pocl-opencl-icd) picks its AVX-512
kernel library on CPUs that have AVX-512 (`pthread-skylake-avx512-...`), and
LLVM 15's x86 back end then aborts the whole process on some kernels
("LLVM ERROR: Cannot select: v32i8 = X86ISD::VBROADCAST" for kdsl's
attention kernel on a Zen 4 EPYC). The AVX2 library compiles them. PoCL
reads `POCL_KERNELLIB_NAME` when its devices start (the first
get_devices()), so kdsl sets it there unless the user chose a value.

PoCL's CPU driver leaves its worker threads unpinned, and on a small VM
(2 vCPUs here) the kernel's workers were at times stacked on one core: the
512^3 GEMM's device time, calls one at a time, flipped between 1.4 and
3.3 ms from one batch of calls to the next, where pinned workers
(POCL_AFFINITY=1: worker i on CPU i) kept 1.5-1.8 ms. SmolLM2 m0e4 on the
engine (bench/llm.py, alternated five times): decode 1.04-1.21x llama.cpp
pinned in five runs of six (0.90x in the sixth) against 0.91-1.09x
unpinned, prefill 544-587 tok/s in five of six against 464-594 (464-482 in
four of five); fifteenth session, docs/performance.md. kdsl sets it where PoCL's workers may run
on every CPU (no taskset or cpuset narrower than the machine, where CPU i
could be outside the allowed set), unless the user chose a value.

PoCL keeps what it compiles in a cache of its own (POCL_CACHE_DIR, by
default ~/.cache/pocl), keyed by the program's source and options, so a
second process building the same source compiles nothing. Asking PoCL for
a program's binary, as kdsl's own cache did, compiles every kernel again
in a generic form that the run itself never uses: the engine's first
answer on a cold cache took 170 s with kdsl's binaries against 84 s
without, and a warm run 12.2 against 10.4 s (2-core VM, 2026-12-08).
`driver_caches_programs` tells kdsl/cache.py to leave the caching to PoCL.
"""
import os
import re
import warnings

_POCL = "Portable Computing Language"
_LAST_BAD_LLVM = 15


def _affected_llvm(platform):
    """The LLVM major version of a PoCL DISTRO build on LLVM <= 15, else None.

    Only a DISTRO build ships kernel libraries per instruction set (and reads
    POCL_KERNELLIB_NAME); a build for one CPU has no avx2 library to switch to."""
    if platform.name.strip() != _POCL or "DISTRO" not in platform.version:
        return None
    m = re.search(r"LLVM (\d+)\.", platform.version)
    return int(m.group(1)) if m and int(m.group(1)) <= _LAST_BAD_LLVM else None


def _cpu_has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"^flags\s*:.*\bavx512f\b", f.read(), re.M) is not None
    except OSError:
        return False


def _all_cpus_allowed():
    """Whether this process may run on every CPU of the machine."""
    try:
        return len(os.sched_getaffinity(0)) == os.cpu_count()
    except (AttributeError, OSError):            # no sched_getaffinity (not Linux)
        return False


def before_devices(platform):
    """Call before platform.get_devices(): steer PoCL on LLVM <= 15 away from
    AVX-512, and pin PoCL's worker threads where every CPU is allowed."""
    if _affected_llvm(platform) and "POCL_KERNELLIB_NAME" not in os.environ \
            and _cpu_has_avx512():
        os.environ["POCL_KERNELLIB_NAME"] = "avx2"
    if platform.name.strip() == _POCL and "POCL_AFFINITY" not in os.environ \
            and _all_cpus_allowed():
        os.environ["POCL_AFFINITY"] = "1"


def driver_caches_programs(platform_name):
    """Whether the driver caches compiled programs on disk by their source:
    PoCL, unless its cache is switched off (POCL_KERNEL_CACHE=0)."""
    return platform_name.strip() == _POCL and os.environ.get("POCL_KERNEL_CACHE", "1") != "0"


def check_device(cl_device):
    """Warn where the work-around came too late (PoCL's devices were started before kdsl's)."""
    llvm = _affected_llvm(cl_device.platform)
    if llvm and "avx512" in cl_device.name and "POCL_KERNELLIB_NAME" not in os.environ:
        warnings.warn(
            f"OpenCL device {cl_device.name.strip()!r}: PoCL on LLVM {llvm} with its AVX-512 "
            "kernel library aborts the process on some kernels (an LLVM bug); set "
            "POCL_KERNELLIB_NAME=avx2 before the first OpenCL call (kdsl does this when it "
            "starts OpenCL itself)", RuntimeWarning, stacklevel=3)
