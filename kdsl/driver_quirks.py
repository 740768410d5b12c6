"""Work-arounds for OpenCL driver bugs, applied before a platform's devices start.

PoCL 3.x built on LLVM 15 (Debian 12's pocl-opencl-icd) picks its AVX-512
kernel library on CPUs that have AVX-512 (`pthread-skylake-avx512-...`), and
LLVM 15's x86 back end then aborts the whole process on some kernels
("LLVM ERROR: Cannot select: v32i8 = X86ISD::VBROADCAST" for kdsl's
attention kernel on a Zen 4 EPYC). The AVX2 library compiles them. PoCL
reads `POCL_KERNELLIB_NAME` when its devices start (the first
get_devices()), so kdsl sets it there unless the user chose a value.
"""
import os
import re
import warnings

_POCL = "Portable Computing Language"
_LAST_BAD_LLVM = 15


def _pocl_llvm_major(platform):
    if platform.name.strip() != _POCL:
        return None
    m = re.search(r"LLVM (\d+)\.", platform.version)
    return int(m.group(1)) if m else None


def _cpu_has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"^flags\s*:.*\bavx512f\b", f.read(), re.M) is not None
    except OSError:
        return False


def before_devices(platform):
    """Call before platform.get_devices(): steer PoCL on LLVM <= 15 away from AVX-512.

    Only a "DISTRO" build of PoCL (its version string says so) ships kernel
    libraries per instruction set and reads POCL_KERNELLIB_NAME; a build for
    one CPU has no avx2 library to switch to."""
    llvm = _pocl_llvm_major(platform)
    if llvm is None or llvm > _LAST_BAD_LLVM or "POCL_KERNELLIB_NAME" in os.environ \
            or "DISTRO" not in platform.version:
        return
    if _cpu_has_avx512():
        os.environ["POCL_KERNELLIB_NAME"] = "avx2"


def check_device(cl_device):
    """Warn where the work-around came too late (PoCL's devices were started before kdsl's)."""
    llvm = _pocl_llvm_major(cl_device.platform)
    if llvm is not None and llvm <= _LAST_BAD_LLVM and "avx512" in cl_device.name \
            and "DISTRO" in cl_device.platform.version \
            and os.environ.get("POCL_KERNELLIB_NAME") is None:
        warnings.warn(
            f"OpenCL device {cl_device.name.strip()!r}: PoCL on LLVM {llvm} with its AVX-512 "
            "kernel library aborts the process on some kernels (an LLVM bug); set "
            "POCL_KERNELLIB_NAME=avx2 before the first OpenCL call (kdsl does this when it "
            "starts OpenCL itself)", RuntimeWarning, stacklevel=3)
