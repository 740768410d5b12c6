"""The program cache: memory and disk hits, a second process, corrupt files, build errors."""
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyopencl as cl
import pytest

import kdsl
from kdsl import cache

REPO = Path(__file__).resolve().parents[1]
SOURCE = "__kernel void add_one(__global float *x) { x[get_global_id(0)] += 1.0f; }\n"
BROKEN = "__kernel void broken(__global float *x) { x[0] = undeclared_name; }\n"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache folder, no programs in memory, counters at zero; kdsl
    keeps binaries whatever the driver (PoCL's own cache is tested below)."""
    monkeypatch.setenv("KDSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KDSL_BINARY_CACHE", "1")
    monkeypatch.delenv("KDSL_DUMP", raising=False)
    monkeypatch.setattr(cache, "_programs", {})
    monkeypatch.setattr(cache, "stats", {"builds": 0, "disk_hits": 0, "memory_hits": 0})
    return tmp_path / "cache"


def forget_memory(monkeypatch):
    monkeypatch.setattr(cache, "_programs", {})


def binary_files(cache_root):
    return sorted((cache_root / "programs").iterdir())


def run_add_one(program):
    """Run the program's add_one on [0, 1, 2, 3]; returns the result."""
    device = kdsl.current_device()
    data = np.arange(4, dtype=np.float32)
    buffer = cl.Buffer(device.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                       hostbuf=data)
    cl.Kernel(program, "add_one")(device.queue, (4,), None, buffer)
    cl.enqueue_copy(device.queue, data, buffer, is_blocking=True)
    return data


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KDSL_CACHE_DIR", str(tmp_path))
    assert cache.cache_dir() == tmp_path
    monkeypatch.delenv("KDSL_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "kdsl"


def test_key_depends_on_device_source_options_and_version(monkeypatch):
    device = kdsl.current_device()
    key = cache.program_key(device, SOURCE)
    assert len(key) == 64
    assert cache.program_key(device, SOURCE) == key
    assert cache.program_key(device, SOURCE + " ") != key
    assert cache.program_key(device, SOURCE, "-cl-fast-relaxed-math") != key

    class OtherDriver:
        fingerprint = device.fingerprint + "-newer"
    assert cache.program_key(OtherDriver(), SOURCE) != key
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    assert cache.program_key(device, SOURCE) != key


def test_build_then_memory_hit(fresh_cache):
    device = kdsl.current_device()
    program = cache.build_program(device, SOURCE, "add_one")
    np.testing.assert_array_equal(run_add_one(program), [1, 2, 3, 4])
    assert cache.build_program(device, SOURCE, "add_one") is program
    assert cache.stats == {"builds": 1, "disk_hits": 0, "memory_hits": 1}
    assert [p.name for p in binary_files(fresh_cache)] == [
        cache.program_key(device, SOURCE) + ".bin"]


def build_in_new_process(**env):
    """Build and run add_one in a new Python process with `env` added to
    os.environ; returns its cache.stats and result."""
    script = (
        "import json, kdsl, sys\n"
        "from kdsl import cache\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_cache import SOURCE, run_add_one\n"
        "program = cache.build_program(kdsl.current_device(), SOURCE, 'add_one')\n"
        "print(json.dumps({'stats': cache.stats, 'result': run_add_one(program).tolist()}))\n")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=path, **env),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_binary_and_does_not_build(fresh_cache):
    cache.build_program(kdsl.current_device(), SOURCE, "add_one")
    report = build_in_new_process(KDSL_CACHE_DIR=str(fresh_cache))
    assert report["stats"] == {"builds": 0, "disk_hits": 1, "memory_hits": 0}
    assert report["result"] == [1, 2, 3, 4]


@pytest.mark.parametrize("platform, setting, pocl_cache, keeps", [
    ("Portable Computing Language", None, None, False),     # PoCL caches itself
    ("Portable Computing Language", None, "0", True),       # ... unless told not to
    ("NVIDIA CUDA", None, None, True),
    ("Portable Computing Language", "1", None, True),       # the user decides
    ("NVIDIA CUDA", "0", None, False),
])
def test_who_keeps_binaries(monkeypatch, platform, setting, pocl_cache, keeps):
    for name, value in (("KDSL_BINARY_CACHE", setting), ("POCL_KERNEL_CACHE", pocl_cache)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)

    class Device:
        platform_name = platform
    assert cache.keeps_binaries(Device()) is keeps


def test_unknown_binary_cache_setting_warns_and_is_ignored(monkeypatch):
    monkeypatch.setenv("KDSL_BINARY_CACHE", "yes")

    class Device:
        platform_name = "NVIDIA CUDA"
    with pytest.warns(UserWarning, match="KDSL_BINARY_CACHE='yes' is neither 0 nor 1"):
        assert cache.keeps_binaries(Device()) is True


@pytest.mark.skipif(kdsl.current_device().platform_name != "Portable Computing Language",
                    reason="PoCL's own program cache")
def test_pocl_second_process_hits_pocls_cache_and_kdsl_writes_no_binary(tmp_path, monkeypatch):
    monkeypatch.delenv("KDSL_BINARY_CACHE", raising=False)
    monkeypatch.delenv("POCL_KERNEL_CACHE", raising=False)
    env = {"KDSL_CACHE_DIR": str(tmp_path / "kdsl"), "POCL_CACHE_DIR": str(tmp_path / "pocl")}
    first = build_in_new_process(**env)
    assert first["stats"]["builds"] == 1 and first["result"] == [1, 2, 3, 4]
    assert not (tmp_path / "kdsl" / "programs").exists()

    def compiled():         # PoCL's compiled kernels and programs, with their times
        return {p: p.stat().st_mtime_ns for p in (tmp_path / "pocl").rglob("*")
                if p.suffix in (".so", ".bc")}
    before = compiled()
    assert any(p.suffix == ".so" for p in before)
    second = build_in_new_process(**env)
    assert second["result"] == [1, 2, 3, 4]
    assert compiled() == before         # nothing compiled again


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_binary_warns_and_is_rebuilt(fresh_cache, monkeypatch, damage):
    device = kdsl.current_device()
    cache.build_program(device, SOURCE, "add_one")
    [path] = binary_files(fresh_cache)
    good = path.read_bytes()
    path.write_bytes({"truncate": good[:len(good) // 2], "garbage": b"\x00garbage" * 64,
                      "empty": b""}[damage])
    forget_memory(monkeypatch)
    with pytest.warns(UserWarning, match=re.escape(f"{path} is truncated or corrupt")):
        program = cache.build_program(device, SOURCE, "add_one")
    np.testing.assert_array_equal(run_add_one(program), [1, 2, 3, 4])
    forget_memory(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # the rebuilt file is whole again
        cache.build_program(device, SOURCE, "add_one")
    assert cache.stats == {"builds": 2, "disk_hits": 1, "memory_hits": 0}


def test_binary_the_driver_rejects_warns_and_is_rebuilt(fresh_cache, monkeypatch):
    device = kdsl.current_device()
    cache.build_program(device, SOURCE, "add_one")
    [path] = binary_files(fresh_cache)
    # A well-formed file whose payload is not a program for this driver.
    path.write_bytes(cache._wrap(b"not a device binary" * 8))
    forget_memory(monkeypatch)
    with pytest.warns(UserWarning, match=re.escape(f"rejected cached binary {path}")):
        program = cache.build_program(device, SOURCE, "add_one")
    np.testing.assert_array_equal(run_add_one(program), [1, 2, 3, 4])
    forget_memory(monkeypatch)
    cache.build_program(device, SOURCE, "add_one")
    assert cache.stats == {"builds": 2, "disk_hits": 1, "memory_hits": 0}


def test_failed_build_shows_log_and_saved_source(fresh_cache):
    with pytest.raises(kdsl.BuildError) as info:
        cache.build_program(kdsl.current_device(), BROKEN, "broken")
    error = info.value
    assert "undeclared_name" in error.log
    assert error.log in str(error) and error.source_path in str(error)
    assert "'broken'" in str(error)
    saved = Path(error.source_path)
    assert saved.parent == fresh_cache / "failed" and saved.name.startswith("broken_")
    assert saved.read_text() == BROKEN
    assert not (fresh_cache / "programs").exists()


def test_dump_writes_every_source_and_keeps_failed_ones_there(fresh_cache, monkeypatch, tmp_path):
    dump = tmp_path / "dump"
    monkeypatch.setenv("KDSL_DUMP", str(dump))
    device = kdsl.current_device()
    cache.build_program(device, SOURCE, "add_one")
    key = cache.program_key(device, SOURCE)
    assert (dump / f"add_one_{key[:8]}.cl").read_text() == SOURCE
    with pytest.raises(kdsl.BuildError) as info:
        cache.build_program(device, BROKEN, "broken")
    assert Path(info.value.source_path).parent == dump
    assert Path(info.value.source_path).read_text() == BROKEN


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "entry.bin"
    cache._write_atomic(target, b"first")
    cache._write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["entry.bin"]


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "entry.bin"
    target.write_bytes(b"old")

    def crash(src, dst):
        assert Path(src).parent == target.parent    # same folder, so the rename is atomic
        raise OSError("disk full")
    monkeypatch.setattr(cache.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        cache._write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["entry.bin"]


def test_unwritable_cache_warns_but_builds(fresh_cache, monkeypatch):
    def crash(src, dst):
        raise OSError("read-only file system")
    monkeypatch.setattr(cache.os, "replace", crash)
    with pytest.warns(UserWarning, match="KDSL_CACHE_DIR"):
        program = cache.build_program(kdsl.current_device(), SOURCE, "add_one")
    np.testing.assert_array_equal(run_add_one(program), [1, 2, 3, 4])
    assert binary_files(fresh_cache) == []
