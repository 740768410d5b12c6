"""Devices: discovery, properties, queues, and choosing the current one."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyopencl as cl
import pytest

import kdsl
from kdsl import device as kdevice

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def keep_current_device(monkeypatch):
    """Each test starts from the default device choice and leaves it as it was."""
    saved = kdsl.current_device()
    monkeypatch.delenv("KDSL_DEVICE", raising=False)
    monkeypatch.delenv("PYOPENCL_CTX", raising=False)
    yield
    kdsl.set_device(saved)


def test_devices_are_found_once_and_numbered():
    found = kdsl.devices()
    assert found and all(isinstance(d, kdsl.Device) for d in found)
    assert [d.index for d in found] == list(range(len(found)))
    assert kdsl.devices() is found


def test_device_properties():
    dev = kdsl.current_device()
    assert isinstance(dev.cl_device, cl.Device)
    assert dev.name and dev.platform_name and dev.driver_version
    assert dev.is_gpu or dev.is_cpu
    assert dev.compute_units >= 1
    assert dev.max_work_group_size >= 1
    assert dev.local_mem_size > 0 and dev.global_mem_size > 0
    assert 0 < dev.max_mem_alloc_size <= dev.global_mem_size
    assert dev.preferred_vector_width_float >= 1
    assert dev.extensions == set(dev.cl_device.extensions.split())
    assert dev.has_fp16 == ("cl_khr_fp16" in dev.extensions)


def test_fingerprint_is_stable_and_hash_is_filename_safe():
    dev = kdsl.current_device()
    parts = dev.fingerprint.split(" | ")
    assert parts == [dev.platform_name, dev.name, dev.driver_version, str(dev.compute_units)]
    assert len(dev.fingerprint_hash) == 16
    assert all(c in "0123456789abcdef" for c in dev.fingerprint_hash)
    assert kdevice.Device(dev.cl_device, dev.index).fingerprint_hash == dev.fingerprint_hash


def test_repr_names_index_device_platform_and_kind():
    dev = kdsl.devices()[0]
    kind = "GPU" if dev.is_gpu else "CPU" if dev.is_cpu else "other"
    assert repr(dev) == f"<kdsl.Device 0: {dev.name} ({dev.platform_name}, {kind})>"


def test_context_and_queue_are_made_once_with_profiling():
    dev = kdsl.current_device()
    assert dev.context is dev.context
    assert dev.queue is dev.queue
    assert dev.queue.properties & cl.command_queue_properties.PROFILING_ENABLE


@pytest.mark.parametrize("priority", [None, "low", "medium", "high"])
def test_make_queue_gives_a_new_working_queue(priority):
    dev = kdsl.current_device()
    queue = dev.make_queue(priority=priority)
    assert queue is not dev.queue
    assert queue.device == dev.cl_device
    queue.finish()


def test_make_queue_rejects_unknown_priority():
    with pytest.raises(ValueError, match="high, medium, low"):
        kdsl.current_device().make_queue(priority="urgent")


def test_kdsl_device_by_index(monkeypatch):
    monkeypatch.setenv("KDSL_DEVICE", str(len(kdsl.devices()) - 1))
    assert kdsl.set_device(None) is kdsl.devices()[-1]
    assert kdsl.current_device() is kdsl.devices()[-1]


def test_kdsl_device_by_case_insensitive_name_part(monkeypatch):
    target = kdsl.devices()[-1]
    monkeypatch.setenv("KDSL_DEVICE", target.name.upper())
    assert kdsl.set_device(None).name == target.name
    monkeypatch.setenv("KDSL_DEVICE", target.platform_name[:8].lower())
    assert kdsl.set_device(None).platform_name == target.platform_name


@pytest.mark.parametrize("value", ["no-such-device", "99"])
def test_bad_kdsl_device_lists_the_devices(monkeypatch, value):
    monkeypatch.setenv("KDSL_DEVICE", value)
    with pytest.raises(ValueError) as info:
        kdsl.set_device(None)
    message = str(info.value)
    assert "KDSL_DEVICE" in message and value in message
    assert repr(kdsl.devices()[0]) in message


def test_pyopencl_ctx_picks_a_platform(monkeypatch):
    target = kdsl.devices()[-1]
    monkeypatch.setenv("PYOPENCL_CTX", target.platform_name.split()[0].lower())
    assert kdsl.set_device(None).platform_name == target.platform_name
    monkeypatch.setenv("PYOPENCL_CTX", "0:0")
    assert kdsl.set_device(None) is kdsl.devices()[0]


def test_kdsl_device_wins_over_pyopencl_ctx(monkeypatch):
    monkeypatch.setenv("PYOPENCL_CTX", "no-such-platform")
    monkeypatch.setenv("KDSL_DEVICE", "0")
    assert kdsl.set_device(None) is kdsl.devices()[0]


def test_bad_pyopencl_ctx_says_what_to_do(monkeypatch):
    monkeypatch.setenv("PYOPENCL_CTX", "no-such-platform")
    with pytest.raises(ValueError, match="PYOPENCL_CTX.*KDSL_DEVICE"):
        kdsl.set_device(None)


def test_set_device_accepts_device_index_and_name():
    dev = kdsl.devices()[0]
    assert kdsl.set_device(dev) is dev
    assert kdsl.set_device(0) is dev
    assert kdsl.set_device(dev.name) is dev
    assert kdsl.current_device() is dev


def _fake(kind, compute_units):
    return SimpleNamespace(is_gpu=kind == "gpu", is_cpu=kind == "cpu", compute_units=compute_units)


def test_default_prefers_first_gpu_then_cpu_with_most_compute_units():
    first_gpu = _fake("gpu", 1)
    assert kdevice._preferred([_fake("cpu", 8), first_gpu, _fake("gpu", 4)]) is first_gpu
    first_big_cpu = _fake("cpu", 4)
    assert kdevice._preferred([_fake("cpu", 2), first_big_cpu, _fake("cpu", 4)]) is first_big_cpu
    cpu = _fake("cpu", 2)
    assert kdevice._preferred([_fake("accelerator", 8), cpu]) is cpu


def test_no_opencl_driver_says_how_to_install_one(tmp_path):
    # An empty vendor folder hides every driver from the ICD loader.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OCL_ICD_VENDORS=str(tmp_path), PYTHONPATH=path)
    result = subprocess.run([sys.executable, "-c", "import kdsl; kdsl.devices()"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "RuntimeError: no OpenCL device found" in result.stderr
    assert "apt-get install pocl-opencl-icd" in result.stderr
    assert "pip install pocl-binary-distribution" in result.stderr


def test_set_queue_priority_moves_later_work_to_the_new_queue():
    device = kdsl.current_device()
    old = device.queue
    try:
        applied = device.set_queue_priority("low")
        assert applied == device._supports_priority_hints()
        assert device.queue is not old
        x = kdsl.tensor(np.arange(5, dtype=np.float32))       # copies go through the new queue
        np.testing.assert_array_equal(x.numpy(), np.arange(5))
        with pytest.raises(ValueError, match="unknown queue priority"):
            device.set_queue_priority("urgent")
    finally:
        device.set_queue_priority(None)
