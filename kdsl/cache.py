"""Building OpenCL programs, with binaries cached in memory and on disk.

A program's key is the sha256 of the device fingerprint, the source, the
build options and CACHE_VERSION, so a new driver or a new code generator
never reuses an old binary. A second process finds the binary on disk and
pays no compile time:

    >>> program = build_program(kdsl.current_device(), source, "add_kernel")
    >>> stats
    {'builds': 0, 'disk_hits': 1, 'memory_hits': 0}

Drivers that cache compiled programs by their source themselves (PoCL; see
driver_quirks.driver_caches_programs) get no binaries from kdsl: reading a
binary out of PoCL compiles every kernel a second time, and a second
process's build from source is a hit in PoCL's own cache.

Environment: KDSL_CACHE_DIR (default ~/.cache/kdsl) holds `programs/`;
KDSL_BINARY_CACHE=1 or 0 keeps kdsl's binaries on disk, or not, whatever
the driver; KDSL_DUMP=DIR writes each program's source to DIR for reading.
"""
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import pyopencl as cl

from .driver_quirks import driver_caches_programs
from .errors import BuildError

# Bump when the code generator or the file format changes, so old binaries are ignored.
CACHE_VERSION = 1

# A binary file is MAGIC, the sha256 of the driver's binary, then the binary:
# some drivers (PoCL among them) crash on a truncated binary, so it is checked first.
_MAGIC = b"KDSLBIN1"
_DIGEST_SIZE = 32

stats = {"builds": 0, "disk_hits": 0, "memory_hits": 0}
_programs = {}      # (context, key) -> built cl.Program


def cache_dir():
    """The cache's root: $KDSL_CACHE_DIR, else ~/.cache/kdsl.

    >>> cache_dir()
    PosixPath('/home/me/.cache/kdsl')
    """
    return Path(os.environ.get("KDSL_CACHE_DIR") or Path.home() / ".cache" / "kdsl")


def program_key(device, source, options=""):
    """The hex sha256 naming a program built from `source` for `device`.

    >>> program_key(kdsl.current_device(), "__kernel void f() {}")[:8]
    '8273069c'
    """
    text = "\0".join([device.fingerprint, source, options, str(CACHE_VERSION)])
    return hashlib.sha256(text.encode()).hexdigest()


def build_program(device, source, kernel_name, options=""):
    """A pyopencl Program for `device` built from OpenCL C `source`, cached.

    `kernel_name` names the dumped or failed source file. A driver build
    failure raises BuildError with the driver's log and the source's path.

    >>> program = build_program(kdsl.current_device(), source, "add_kernel")
    >>> kernel = cl.Kernel(program, "add_kernel")
    """
    key = program_key(device, source, options)
    program = _programs.get((device.context, key))
    if program is not None:
        stats["memory_hits"] += 1
        return program
    dump_dir = os.environ.get("KDSL_DUMP")
    if dump_dir:
        _write_atomic(_source_path(Path(dump_dir), kernel_name, key), source.encode())
    if keeps_binaries(device):
        binary_path = cache_dir() / "programs" / f"{key}.bin"
        program = _load_binary(device, binary_path, options)
        if program is None:
            program = _build_from_source(device, source, kernel_name, options, key)
            _save_binary(program, binary_path)
    else:
        program = _build_from_source(device, source, kernel_name, options, key)
    _programs[(device.context, key)] = program
    return program


def keeps_binaries(device):
    """Whether kdsl stores `device`'s program binaries on disk: yes unless the
    driver caches programs itself (PoCL); KDSL_BINARY_CACHE=1 or 0 decides
    instead where it is set."""
    choice = os.environ.get("KDSL_BINARY_CACHE", "").strip()
    if choice in ("0", "1"):
        return choice == "1"
    if choice:
        warnings.warn(f"kdsl: KDSL_BINARY_CACHE={choice!r} is neither 0 nor 1; ignored",
                      stacklevel=3)
    return not driver_caches_programs(device.platform_name)


def _load_binary(device, path, options):
    """The program stored at `path`, or None when it is missing or unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    binary = _unwrap(data)
    if binary is None:
        warnings.warn(f"kdsl: cached binary {path} is truncated or corrupt; rebuilding it "
                      "from source", stacklevel=3)
        return None
    try:
        program = cl.Program(device.context, [device.cl_device], [binary]).build(options)
    except cl.Error as error:
        warnings.warn(f"kdsl: the driver rejected cached binary {path} ({error}); rebuilding "
                      "it from source", stacklevel=3)
        return None
    stats["disk_hits"] += 1
    return program


def _build_from_source(device, source, kernel_name, options, key):
    # pyopencl's Program(context, source) would keep a binary cache of its own
    # in ~/.cache/pyopencl; wrapping a raw program builds straight from source.
    program = cl.Program(cl._cl._Program(device.context, source))
    stats["builds"] += 1
    try:
        program.build(options, devices=[device.cl_device])
    except cl.Error as error:
        log = program.get_build_info(device.cl_device, cl.program_build_info.LOG).strip()
        path = _save_failed_source(source, kernel_name, key)
        raise BuildError(kernel_name, str(path), log or str(error)) from None
    return program


def _save_failed_source(source, kernel_name, key):
    dump_dir = os.environ.get("KDSL_DUMP")
    path = _source_path(Path(dump_dir) if dump_dir else cache_dir() / "failed", kernel_name, key)
    _write_atomic(path, source.encode())
    return path


def _source_path(folder, kernel_name, key):
    return folder / f"{kernel_name}_{key[:8]}.cl"


def _save_binary(program, path):
    binary = program.get_info(cl.program_info.BINARIES)[0]
    if not binary:
        return      # some drivers cannot export binaries; their programs are not cached
    try:
        _write_atomic(path, _wrap(binary))
    except OSError as error:
        warnings.warn(f"kdsl: could not write the program cache ({error}); programs will be "
                      "rebuilt in each process; set KDSL_CACHE_DIR to a writable folder",
                      stacklevel=3)


def _wrap(binary):
    return _MAGIC + hashlib.sha256(binary).digest() + binary


def _unwrap(data):
    """The binary inside a cache file's bytes, or None if they fail the check."""
    header = len(_MAGIC) + _DIGEST_SIZE
    binary = data[header:]
    if (len(data) <= header or not data.startswith(_MAGIC)
            or hashlib.sha256(binary).digest() != data[len(_MAGIC):header]):
        return None
    return binary


def _write_atomic(path, data):
    """Write `data` to `path` so that readers see the old file or the whole new one.

    A temporary file in the same folder is renamed over `path`; a crash leaves
    at worst a stray temporary, never a half-written cache entry.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
        os.replace(temp_name, path)
    except BaseException:
        os.unlink(temp_name)
        raise
