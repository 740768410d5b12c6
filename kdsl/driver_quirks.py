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


def before_devices(platform):
    """Call before platform.get_devices(): steer PoCL on LLVM <= 15 away from AVX-512."""
    if _affected_llvm(platform) and "POCL_KERNELLIB_NAME" not in os.environ \
            and _cpu_has_avx512():
        os.environ["POCL_KERNELLIB_NAME"] = "avx2"


def check_device(cl_device):
    """Warn where the work-around came too late (PoCL's devices were started before kdsl's)."""
    llvm = _affected_llvm(cl_device.platform)
    if llvm and "avx512" in cl_device.name and "POCL_KERNELLIB_NAME" not in os.environ:
        warnings.warn(
            f"OpenCL device {cl_device.name.strip()!r}: PoCL on LLVM {llvm} with its AVX-512 "
            "kernel library aborts the process on some kernels (an LLVM bug); set "
            "POCL_KERNELLIB_NAME=avx2 before the first OpenCL call (kdsl does this when it "
            "starts OpenCL itself)", RuntimeWarning, stacklevel=3)
