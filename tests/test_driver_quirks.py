"""The PoCL/LLVM 15 AVX-512 work-around (kdsl/driver_quirks.py), with stand-in platforms."""
import os
from types import SimpleNamespace

import pytest

from kdsl import driver_quirks

POCL_15 = ("OpenCL 3.0 PoCL 3.1+debian  Linux, None+Asserts, RELOC, SPIR, LLVM 15.0.6, SLEEF, "
           "DISTRO, POCL_DEBUG")
POCL_17 = "OpenCL 3.0 PoCL 5.0  Linux, Release, RELOC, SPIR-V, LLVM 17.0.6, SLEEF, DISTRO"
POCL_15_ONE_CPU = "OpenCL 3.0 PoCL 3.0-rc2  Linux, Release, RELOC, LLVM 15.0.7, SLEEF"


def platform(name="Portable Computing Language", version=POCL_15):
    return SimpleNamespace(name=name, version=version)


@pytest.fixture
def no_kernellib(monkeypatch):
    # set first so that monkeypatch restores the variable's original state,
    # whatever before_devices() writes into os.environ during the test
    monkeypatch.setenv("POCL_KERNELLIB_NAME", "placeholder")
    monkeypatch.delenv("POCL_KERNELLIB_NAME")


@pytest.mark.parametrize("avx512, plat, expected", [
    (True, platform(), "avx2"),
    (False, platform(), None),
    (True, platform(version=POCL_17), None),
    (True, platform(version=POCL_15_ONE_CPU), None),      # no per-ISA libraries to pick from
    (True, platform(name="NVIDIA CUDA", version="OpenCL 3.0 CUDA 12.8"), None),
])
def test_kernellib_is_steered_only_for_pocl_on_llvm15_with_avx512(monkeypatch, no_kernellib,
                                                                  avx512, plat, expected):
    monkeypatch.setattr(driver_quirks, "_cpu_has_avx512", lambda: avx512)
    driver_quirks.before_devices(plat)
    assert os.environ.get("POCL_KERNELLIB_NAME") == expected


def test_user_choice_is_kept(monkeypatch):
    monkeypatch.setenv("POCL_KERNELLIB_NAME", "avx512")
    monkeypatch.setattr(driver_quirks, "_cpu_has_avx512", lambda: True)
    driver_quirks.before_devices(platform())
    assert os.environ["POCL_KERNELLIB_NAME"] == "avx512"


def test_late_start_warns_with_the_fix(no_kernellib):
    dev = SimpleNamespace(name="pthread-skylake-avx512-AMD EPYC", platform=platform())
    with pytest.warns(RuntimeWarning, match="POCL_KERNELLIB_NAME=avx2"):
        driver_quirks.check_device(dev)


def test_no_warning_for_a_safe_device(no_kernellib, recwarn):
    driver_quirks.check_device(SimpleNamespace(name="pthread-haswell-AMD EPYC",
                                               platform=platform()))
    driver_quirks.check_device(SimpleNamespace(name="pthread-skylake-avx512-Xeon",
                                               platform=platform(version=POCL_17)))
    assert not recwarn.list
