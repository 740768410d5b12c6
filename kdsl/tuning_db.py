"""The per-device tuning database: the best launch config per (kernel, key values).

One JSON file per device, `KDSL_CACHE_DIR/tuning/<fingerprint hash>.json`:

    {"version": 2, "fingerprint": "Portable Computing Language | pthread-... | 3.1 | 2",
     "device": {"platform": ..., "name": ..., "driver": ..., "compute_units": 2, "type": "CPU"},
     "entries": {"matmul": {"{\\"K\\":4096,\\"M\\":16,\\"N\\":4096}": {
         "key": {"M": 16, "N": 4096, "K": 4096}, "config": {"BM": 8, ...},
         "time_s": 0.011, "default_config": {...}, "default_time_s": 0.013, ...}}}}

Writers take a file lock, re-read the file, merge their entry and replace the
file atomically, so two processes tuning at once both keep their results and a
reader never sees half a file. A file that is corrupt, from another version
or from another device gives one warning and is treated as empty: callers then
use their defaults, never crash.

    >>> db = kdsl.tuning_db.database()
    >>> db.record("matmul", {"M": 16, "N": 4096, "K": 4096}, {"BM": 8, "BN": 32}, 0.011)
    >>> db.best_config("matmul", {"M": 32, "N": 4096, "K": 4096})    # nearest tuned key
    {'BM': 8, 'BN': 32}
"""
import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path

from .cache import _write_atomic, cache_dir
from .device import as_device

try:
    import fcntl
except ImportError:         # Windows: no advisory locks; concurrent tuners may lose an entry
    fcntl = None

# Bump when the file layout or what its times mean changes; files of another version are
# ignored (with a warning). 2: the kernels that read weights are timed with the caches
# flushed (autotuner.time_call flush_cache); configs chosen hot under 1 ran up to 2x slower
# in a model (a 2-row fp32 GEMV read 0.38-0.44 of the copy bandwidth where the default
# reads 0.69).
DB_VERSION = 2

# How often a long-running process looks for entries another process wrote.
_RELOAD_INTERVAL_S = 1.0

_warned = set()             # paths already warned about, so each problem warns once per process
_defaults_only = 0          # > 0 inside defaults_only(): lookups find nothing


@contextlib.contextmanager
def defaults_only():
    """Within this block every lookup finds nothing, so callers use their defaults.

    The tuner measures the default config a wrapper would pick untuned:

    >>> with kdsl.tuning_db.defaults_only():
    ...     default = kdsl_kernels.configs.matmul_config(16, 4096, 4096, True)
    """
    global _defaults_only
    _defaults_only += 1
    try:
        yield
    finally:
        _defaults_only -= 1


def db_path(device=None):
    """The database file of `device` (default: the current device).

    >>> kdsl.tuning_db.db_path()
    PosixPath('/home/me/.cache/kdsl/tuning/b89eefd7f1ce322f.json')
    """
    return cache_dir() / "tuning" / f"{as_device(device).fingerprint_hash}.json"


def key_text(key):
    """The canonical text of a key dict: the same values give the same text in any order.

    >>> key_text({"N": 4096, "M": 1})
    '{"M":1,"N":4096}'
    """
    return json.dumps(_plain(key), sort_keys=True, separators=(",", ":"))


def key_distance(a, b):
    """How far apart two keys are: the sum of |log2(1+x) - log2(1+y)| over numeric values.

    Keys with different names, or different non-numeric values (a layout flag,
    a dtype), are infinitely far apart: a config tuned for one says nothing
    about the other.

    >>> key_distance({"M": 16, "N": 4096}, {"M": 32, "N": 4096})
    0.9...
    """
    if set(a) != set(b):
        return math.inf
    total = 0.0
    for name in sorted(a):          # one order, so the float sum is symmetric
        x, y = a[name], b[name]
        if _is_number(x) and _is_number(y):
            total += abs(math.log2(1 + abs(x)) - math.log2(1 + abs(y)))
        elif x != y:
            return math.inf
    return total


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain(value):
    """`value` with numpy scalars turned into Python ones, so json can write it."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def device_info(device):
    """What a database file says about its device, for `show` and for import checks."""
    return {"platform": device.platform_name, "name": device.name,
            "driver": device.driver_version, "compute_units": device.compute_units,
            "type": "GPU" if device.is_gpu else "CPU" if device.is_cpu else "other"}


class TuningDB:
    """The tuning entries of one device, read from and written to its file.

    >>> db = TuningDB(kdsl.current_device())
    >>> db.lookup("softmax", {"rows": 32, "cols": 4096})     # None until tuned
    """

    def __init__(self, device=None, path=None):
        self.device = as_device(device)
        self.path = Path(path) if path is not None else db_path(self.device)
        self._entries = {}          # kernel -> {key text -> entry}
        self._memo = {}             # (kernel, key items or text) -> config or None
        self._stamp = None          # (mtime_ns, size) of the file last read
        self._checked_at = -math.inf
        self.reload()

    # ------------------------------------------------------------- reading
    def reload(self):
        """Read the file again (another process may have tuned more)."""
        self._checked_at = time.monotonic()
        self._stamp = self._file_stamp()
        self._entries = self._read(warn=True)
        self._memo = {}

    def _refresh(self):
        now = time.monotonic()
        if now - self._checked_at < _RELOAD_INTERVAL_S:
            return
        self._checked_at = now
        if self._file_stamp() != self._stamp:
            self.reload()

    def _file_stamp(self):
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def _read(self, warn):
        """The file's entries; {} (with one warning when `warn`) if it is unusable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as error:
            self._warn(f"cannot read it ({error})", warn)
            return {}
        problem = self._problem(text)
        if problem:
            self._warn(problem, warn)
            return {}
        return json.loads(text)["entries"]

    def _problem(self, text):
        """Why the file's text cannot be used, or None."""
        try:
            data = json.loads(text)
        except ValueError:
            return "it is truncated or not JSON"
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            return "it is not a kdsl tuning database"
        if data.get("version") != DB_VERSION:
            return (f"it has version {data.get('version')!r}, this kdsl reads version "
                    f"{DB_VERSION}")
        if data.get("fingerprint") != self.device.fingerprint:
            return (f"it belongs to another device ({data.get('fingerprint')!r}, this one is "
                    f"{self.device.fingerprint!r})")
        return None

    def _warn(self, problem, warn):
        if warn and str(self.path) not in _warned:
            _warned.add(str(self.path))
            warnings.warn(f"kdsl: ignoring tuning database {self.path}: {problem}; default "
                          "configs are used until `kdsl-autotune` tunes this device again",
                          stacklevel=4)

    def lookup(self, kernel, key):
        """The entry tuned for exactly this key, or None."""
        self._refresh()
        return self._entries.get(kernel, {}).get(key_text(key))

    def nearest(self, kernel, key):
        """The entry whose key is nearest to `key` (see key_distance), or None.

        >>> db.nearest("matmul", {"M": 100, "N": 4096, "K": 4096})["key"]
        {'M': 128, 'N': 4096, 'K': 4096}
        """
        self._refresh()
        key = _plain(key)
        best, best_distance = None, math.inf
        for text, entry in sorted(self._entries.get(kernel, {}).items()):
            distance = key_distance(key, entry.get("key", {}))
            if distance < best_distance:
                best, best_distance = entry, distance
        return best

    def best_config(self, kernel, key):
        """The config tuned for `key`, else for the nearest tuned key, else None.

        Memoised per key: library wrappers call this on every launch.
        """
        if _defaults_only:
            return None
        self._refresh()
        # the key's items as they are where they are ints, bools and strings
        # (typed, as True and 1 are different keys; in the caller's order):
        # json text for every launch cost more than the launch. Floats (nan
        # never equals itself, -0.0 equals 0.0) and the rest go by the text
        items = tuple((k, type(v), v) for k, v in key.items())
        if all(t in _PLAIN_KEY_TYPES for _, t, _ in items):
            memo_key = (kernel, items)
        else:
            memo_key = (kernel, key_text(key))
        if memo_key not in self._memo:
            entry = self.lookup(kernel, key) or self.nearest(kernel, key)
            self._memo[memo_key] = entry["config"] if entry else None
        return self._memo[memo_key]

    def entries(self):
        """Every entry as (kernel, entry), sorted by kernel then key."""
        self._refresh()
        return [(kernel, self._entries[kernel][text])
                for kernel in sorted(self._entries) for text in sorted(self._entries[kernel])]

    # ------------------------------------------------------------- writing
    def record(self, kernel, key, config, time_s, **extra):
        """Store the best `config` for (kernel, key), measured at `time_s` seconds.

        `extra` adds fields to the entry (default_config, default_time_s,
        skipped notes...). Safe with other processes writing at the same time.
        """
        entry = {"key": _plain(key), "config": _plain(config), "time_s": float(time_s),
                 "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        entry.update(_plain(extra))
        self.merge({kernel: {key_text(key): entry}})

    def merge(self, entries):
        """Add `entries` ({kernel: {key text: entry}}) to the file under the lock."""
        with self._locked():
            current = self._read_for_update()
            for kernel, by_key in entries.items():
                current.setdefault(kernel, {}).update(by_key)
            data = {"version": DB_VERSION, "fingerprint": self.device.fingerprint,
                    "device": device_info(self.device), "entries": current}
            _write_atomic(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        self.reload()

    def _read_for_update(self):
        """The entries to extend; an unusable file is moved aside, not overwritten."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        problem = self._problem(text)
        if problem is None:
            return json.loads(text)["entries"]
        aside = self.path.with_name(self.path.name + ".unusable")
        os.replace(self.path, aside)
        warnings.warn(f"kdsl: tuning database {self.path} was unusable ({problem}); moved it "
                      f"to {aside} and started a new one", stacklevel=4)
        return {}

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    # ------------------------------------------------------- export / import
    def export(self, path):
        """Write this device's database to `path` (to ship with an app, say)."""
        self._refresh()
        data = {"version": DB_VERSION, "fingerprint": self.device.fingerprint,
                "device": device_info(self.device), "entries": self._entries}
        _write_atomic(Path(path), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        return sum(len(by_key) for by_key in self._entries.values())

    def import_file(self, path, force=False):
        """Merge the entries of an exported file; returns how many were imported.

        The file must come from a device of the same kind (platform and device
        name); a different driver version or compute-unit count only warns.
        `force=True` imports from any device.
        """
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot import {path}: not a readable tuning database "
                             f"({error})") from None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise ValueError(f"cannot import {path}: it is not a kdsl tuning database")
        if data.get("version") != DB_VERSION:
            raise ValueError(f"cannot import {path}: it has version {data.get('version')!r}, "
                             f"this kdsl reads version {DB_VERSION}")
        theirs, ours = data.get("device", {}), device_info(self.device)
        same_kind = all(theirs.get(f) == ours[f] for f in ("platform", "name"))
        if not same_kind and not force:
            raise ValueError(f"cannot import {path}: it was tuned on {theirs.get('platform')} / "
                             f"{theirs.get('name')}, this device is {ours['platform']} / "
                             f"{ours['name']}; pass force=True (--force) to import anyway")
        if same_kind and any(theirs.get(f) != ours[f] for f in ("driver", "compute_units")):
            warnings.warn(f"kdsl: {path} was tuned with driver {theirs.get('driver')!r} and "
                          f"{theirs.get('compute_units')} compute units, this device has "
                          f"{ours['driver']!r} and {ours['compute_units']}; its configs may "
                          "not be the best here", stacklevel=2)
        self.merge(data["entries"])
        return sum(len(by_key) for by_key in data["entries"].values())


_PLAIN_KEY_TYPES = frozenset({int, bool, str})
_databases = {}             # (fingerprint, $KDSL_CACHE_DIR, $HOME) -> TuningDB


def database(device=None):
    """The tuning database of `device` (default: the current device), opened once.

    >>> kdsl.tuning_db.database().path.name
    'b89eefd7f1ce322f.json'
    """
    device = as_device(device)
    # keyed by what the path derives from, so a lookup (every library launch)
    # builds no Path; a changed $KDSL_CACHE_DIR or $HOME opens another file
    memo = (device.fingerprint, os.environ.get("KDSL_CACHE_DIR"), os.environ.get("HOME"))
    db = _databases.get(memo)
    if db is None:
        db = _databases[memo] = TuningDB(device, db_path(device))
    return db
