"""OpenCL devices: which exist, which one kdsl uses, and what each can do.

    >>> import kdsl
    >>> kdsl.devices()
    [<kdsl.Device 0: pthread-haswell-AMD EPYC (Portable Computing Language, CPU)>]
    >>> kdsl.current_device().compute_units
    2

The default device is chosen from the environment: `KDSL_DEVICE` (an index
into `devices()` or part of "platform name device name"), else `PYOPENCL_CTX`
(pyopencl's "platform[:device]" selector), else the first GPU, else the CPU
device with the most compute units.
"""
import functools
import hashlib
import os
import re

import pyopencl as cl

from . import driver_quirks

_INSTALL_HINT = ("install an OpenCL driver: on Debian/Ubuntu `apt-get install pocl-opencl-icd`, "
                 "elsewhere `pip install pocl-binary-distribution` (or run `bash install.sh`)")

# cl_khr_priority_hints: a low-priority queue lets a long prefill yield the
# GPU to the UI. The values come from the extension's header.
_CL_QUEUE_PROPERTIES = 0x1093
_CL_QUEUE_PRIORITY_KHR = 0x1096
QUEUE_PRIORITIES = {"high": 1 << 0, "medium": 1 << 1, "low": 1 << 2}


class Device:
    """One OpenCL device, with the context and queue kdsl uses on it.

    >>> dev = kdsl.current_device()
    >>> dev.name, dev.is_cpu, dev.max_work_group_size
    ('pthread-haswell-AMD EPYC', True, 4096)
    >>> dev.fingerprint_hash          # a cache and tuning key
    'b89eefd7f1ce322f'
    """

    def __init__(self, cl_device, index):
        self.cl_device = cl_device
        self.index = index
        self.platform_name = cl_device.platform.name.strip()
        self.name = cl_device.name.strip()
        self._context = None
        self._queue = None
        self.queue_priority = None

    @functools.cached_property
    def is_gpu(self):
        return bool(self.cl_device.type & cl.device_type.GPU)

    @functools.cached_property
    def is_cpu(self):
        return bool(self.cl_device.type & cl.device_type.CPU)

    @functools.cached_property
    def driver_version(self):
        return self.cl_device.driver_version.strip()

    @functools.cached_property
    def compute_units(self):
        return self.cl_device.max_compute_units

    @functools.cached_property
    def max_work_group_size(self):
        return self.cl_device.max_work_group_size

    @functools.cached_property
    def local_mem_size(self):
        return self.cl_device.local_mem_size

    @functools.cached_property
    def global_mem_size(self):
        return self.cl_device.global_mem_size

    @functools.cached_property
    def max_mem_alloc_size(self):
        """The largest single buffer the device allows, in bytes."""
        return self.cl_device.max_mem_alloc_size

    @functools.cached_property
    def preferred_vector_width_float(self):
        return self.cl_device.preferred_vector_width_float

    @functools.cached_property
    def extensions(self):
        """The device's OpenCL extensions, as a set of names."""
        return frozenset(self.cl_device.extensions.split())

    @functools.cached_property
    def has_fp16(self):
        """Whether fp16 arithmetic is allowed (cl_khr_fp16); fp16 storage always is."""
        return "cl_khr_fp16" in self.extensions

    @functools.cached_property
    def fingerprint(self):
        """A stable description of device and driver: a new driver means new binaries.

        >>> kdsl.current_device().fingerprint
        'Portable Computing Language | pthread-haswell-AMD EPYC | 3.1+debian | 2'
        """
        return " | ".join([self.platform_name, self.name, self.driver_version,
                           str(self.compute_units)])

    @functools.cached_property
    def fingerprint_hash(self):
        """The fingerprint as 16 hex digits, safe in a file name."""
        return hashlib.sha256(self.fingerprint.encode()).hexdigest()[:16]

    @property
    def context(self):
        """The OpenCL context of this device alone, created on first use."""
        if self._context is None:
            self._context = cl.Context([self.cl_device])
        return self._context

    @property
    def queue(self):
        """The default in-order queue, with profiling on so launches can be timed."""
        if self._queue is None:
            self._queue = self.make_queue()
        return self._queue

    def make_queue(self, priority=None, *, profiling=True):
        """A new queue; `priority` is "low", "medium" or "high".

        The priority is a hint (cl_khr_priority_hints): on devices without the
        extension the queue is an ordinary one. profiling=False gives a queue
        whose launches cannot be timed but enqueue faster (16 -> 9 us per
        kernel on NVIDIA's driver).

        >>> background = kdsl.current_device().make_queue(priority="low")
        """
        if priority is not None and priority not in QUEUE_PRIORITIES:
            raise ValueError(f"unknown queue priority {priority!r}; "
                             f"use one of {', '.join(QUEUE_PRIORITIES)} or None")
        profiling = cl.command_queue_properties.PROFILING_ENABLE if profiling else 0
        if priority is None or not self._supports_priority_hints():
            return cl.CommandQueue(self.context, self.cl_device, properties=profiling)
        # A flat key/value list makes pyopencl call clCreateCommandQueueWithProperties.
        properties = [_CL_QUEUE_PROPERTIES, profiling,
                      _CL_QUEUE_PRIORITY_KHR, QUEUE_PRIORITIES[priority]]
        return cl.CommandQueue(self.context, self.cl_device, properties=properties)

    def set_queue_priority(self, priority, *, profiling=True):
        """Make every later launch and copy on this device go to a queue of this
        priority (None: an ordinary one), with or without profiling.

        Waits for the old queue, so nothing is reordered. Returns whether the
        hint took effect: False where the driver lacks cl_khr_priority_hints,
        in which case the new queue is an ordinary one. Timing launches
        (kdsl.autotune, profiling events) needs profiling; the autotuner
        switches it on for its measurements.

        >>> kdsl.current_device().set_queue_priority("low") in (True, False)
        True
        """
        queue = self.make_queue(priority, profiling=profiling)
        if self._queue is not None:
            self._queue.finish()
        self._queue = queue
        self.queue_priority = priority
        return priority is not None and self._supports_priority_hints()

    @property
    def queue_profiling(self):
        """Whether launches on the current queue can be timed by their events."""
        return bool(self.queue.properties & cl.command_queue_properties.PROFILING_ENABLE)

    def _supports_priority_hints(self):
        # Property lists need clCreateCommandQueueWithProperties, an OpenCL 2.0 call.
        match = re.match(r"OpenCL (\d+)", self.cl_device.platform.version)
        return ("cl_khr_priority_hints" in self.extensions
                and match is not None and int(match.group(1)) >= 2)

    def __repr__(self):
        kind = "GPU" if self.is_gpu else "CPU" if self.is_cpu else "other"
        return f"<kdsl.Device {self.index}: {self.name} ({self.platform_name}, {kind})>"


_devices = None
_current = None


def devices():
    """Every OpenCL device on every platform, in a fixed order (found once).

    >>> [d.name for d in kdsl.devices()]
    ['pthread-haswell-AMD EPYC']
    """
    global _devices
    if _devices is None:
        found = [cl_device for platform in _platforms()
                 for cl_device in _platform_devices(platform)]
        if not found:
            raise RuntimeError(f"no OpenCL device found; {_INSTALL_HINT}")
        _devices = [Device(cl_device, i) for i, cl_device in enumerate(found)]
    return _devices


def _platforms():
    try:
        return cl.get_platforms()
    except cl.Error:
        # The ICD loader reports "no platform" as an error, not as [].
        return []


def _platform_devices(platform):
    driver_quirks.before_devices(platform)
    try:
        found = platform.get_devices()
    except cl.Error:
        return []
    for cl_device in found:
        driver_quirks.check_device(cl_device)
    return found


def current_device():
    """The device kernels and tensors use unless told otherwise.

    >>> kdsl.current_device()
    <kdsl.Device 0: pthread-haswell-AMD EPYC (Portable Computing Language, CPU)>
    """
    global _current
    if _current is None:
        _current = _default_device()
    return _current


def set_device(device):
    """Make `device` current: a Device, an index, or part of its name; returns it.

    None goes back to the default choice (environment, then first GPU, then best CPU).

    >>> kdsl.set_device("pthread")
    <kdsl.Device 0: pthread-haswell-AMD EPYC (Portable Computing Language, CPU)>
    """
    global _current
    _current = _default_device() if device is None else find_device(device)
    return _current


def as_device(device):
    """`device` resolved as by find_device, or the current device when None.

    >>> kdsl.device.as_device(None) is kdsl.current_device()
    True
    """
    return current_device() if device is None else find_device(device)


def find_device(spec):
    """The device named by a Device, an index, or a case-insensitive name part.

    The name searched is "platform name device name"; the first match wins.

    >>> kdsl.device.find_device("portable")
    <kdsl.Device 0: pthread-haswell-AMD EPYC (Portable Computing Language, CPU)>
    """
    if isinstance(spec, Device):
        return spec
    all_devices = devices()
    text = str(spec).strip()
    if isinstance(spec, int) or text.isdigit():
        index = int(text)
        if 0 <= index < len(all_devices):
            return all_devices[index]
    else:
        for device in all_devices:
            if text.lower() in f"{device.platform_name} {device.name}".lower():
                return device
    raise ValueError(f"no OpenCL device matches {spec!r}; give an index or part of a name "
                     f"of one of:\n{_listing(all_devices)}")


def _default_device():
    choice = os.environ.get("KDSL_DEVICE", "").strip()
    if choice:
        try:
            return find_device(choice)
        except ValueError as error:
            raise ValueError(f"KDSL_DEVICE={choice!r}: {error}") from None
    pyopencl_ctx = os.environ.get("PYOPENCL_CTX", "").strip()
    if pyopencl_ctx:
        return _from_pyopencl_ctx(pyopencl_ctx)
    return _preferred(devices())


def _preferred(candidates):
    gpus = [d for d in candidates if d.is_gpu]
    if gpus:
        return gpus[0]
    # max() keeps the first of equals, so ties go to the earlier device.
    return max(candidates, key=lambda d: (d.is_cpu, d.compute_units))


def _from_pyopencl_ctx(value):
    """Honour pyopencl's PYOPENCL_CTX: "platform[:device]", each an index or a name part."""
    platform_part, _, device_part = value.partition(":")
    by_platform = {}
    for device in devices():
        by_platform.setdefault(device.platform_name, []).append(device)
    platforms = list(by_platform)
    if platform_part.isdigit() and int(platform_part) < len(platforms):
        candidates = by_platform[platforms[int(platform_part)]]
    else:
        candidates = [d for d in devices() if platform_part.lower() in d.platform_name.lower()]
    if device_part.isdigit():
        index = int(device_part)
        candidates = candidates[index:index + 1]
    if not candidates:
        raise ValueError(f"PYOPENCL_CTX={value!r} matches no OpenCL device; unset it, or set "
                         f"KDSL_DEVICE to an index or name part of one of:\n"
                         f"{_listing(devices())}")
    return _preferred(candidates)


def _listing(all_devices):
    return "\n".join(f"  {d!r}" for d in all_devices)
