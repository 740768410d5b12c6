"""Shared test set-up: markers, a private program cache, hypothesis settings.

Markers: `slow` (long tests, skipped unless `-m slow` or KDSL_RUN_SLOW=1), `gpu`
(skipped where no OpenCL GPU exists).
"""
import os
import shutil
import tempfile

import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_own_cache_dir = None


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test")
    config.addinivalue_line("markers", "gpu: needs an OpenCL GPU; skipped where there is none")
    # Tests must neither read binaries a developer's earlier runs left in
    # ~/.cache/kdsl nor fill it; an explicit KDSL_CACHE_DIR is kept.
    global _own_cache_dir
    if "KDSL_CACHE_DIR" not in os.environ:
        _own_cache_dir = tempfile.mkdtemp(prefix="kdsl-test-cache-")
        os.environ["KDSL_CACHE_DIR"] = _own_cache_dir


def pytest_unconfigure(config):
    if _own_cache_dir is not None:
        shutil.rmtree(_own_cache_dir, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    # slow tests (SmolLM2 against transformers, head dim 256, ...) run when asked
    # for: `-m slow`, or KDSL_RUN_SLOW=1 beside the rest. CI's command skips them to
    # stay within its 15 minutes on 2 cores with PoCL's kernel cache cold.
    asked = "slow" in (config.option.markexpr or "") or os.environ.get("KDSL_RUN_SLOW") == "1"
    if not asked:
        skip_slow = pytest.mark.skip(reason="slow: run with -m slow or KDSL_RUN_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip_slow)
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _has_gpu():
        skip = pytest.mark.skip(reason="no OpenCL GPU device on this machine")
        for item in gpu_items:
            item.add_marker(skip)


def _has_gpu():
    from kdsl.device import devices
    try:
        return any(device.is_gpu for device in devices())
    except RuntimeError:     # no OpenCL device at all
        return False


@pytest.fixture(autouse=True)
def _profiling_queue():
    """Each test starts on a profiling queue: loading an LLM switches the device to
    a faster queue without profiling, for the rest of the process."""
    import kdsl
    device = kdsl.current_device()
    if device._queue is not None and not device.queue_profiling:
        device.set_queue_priority(None)
    yield
