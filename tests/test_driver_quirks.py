"""PoCL work-arounds (kdsl/driver_quirks.py): the LLVM 15 AVX-512 library, pinned
workers; with stand-in platforms."""
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


@pytest.mark.parametrize("variable, choice", [("POCL_KERNELLIB_NAME", "avx512"),
                                              ("POCL_AFFINITY", "0")])
def test_user_choice_is_kept(monkeypatch, variable, choice):
    # where kdsl would otherwise set each: AVX-512 on LLVM 15, every CPU allowed
    monkeypatch.setenv(variable, choice)
    monkeypatch.setattr(driver_quirks, "_cpu_has_avx512", lambda: True)
    monkeypatch.setattr(driver_quirks, "_all_cpus_allowed", lambda: True)
    driver_quirks.before_devices(platform())
    assert os.environ[variable] == choice


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


@pytest.fixture
def no_affinity(monkeypatch):
    monkeypatch.setenv("POCL_AFFINITY", "placeholder")
    monkeypatch.delenv("POCL_AFFINITY")


@pytest.mark.parametrize("plat, all_cpus, expected", [
    (platform(), True, "1"),
    (platform(version=POCL_17), True, "1"),
    (platform(), False, None),                    # taskset or a cpuset: CPU i may be outside
    (platform(name="NVIDIA CUDA", version="OpenCL 3.0 CUDA 12.8"), True, None),
])
def test_pocl_workers_are_pinned_where_every_cpu_is_allowed(monkeypatch, no_affinity, plat,
                                                            all_cpus, expected):
    monkeypatch.setattr(driver_quirks, "_all_cpus_allowed", lambda: all_cpus)
    monkeypatch.setattr(driver_quirks, "_cpu_has_avx512", lambda: False)
    driver_quirks.before_devices(plat)
    assert os.environ.get("POCL_AFFINITY") == expected
