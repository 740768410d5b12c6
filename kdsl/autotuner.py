"""Autotuning, with Triton's meaning: time each launch config, keep the best, reuse it.

    @kdsl.autotune(configs=[kdsl.Config({"BLOCK": 256}, num_threads=64),
                            kdsl.Config({"BLOCK": 1024}, num_threads=128)],
                   key=["n"])
    @kdsl.jit
    def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: kl.constexpr):
        ...

    add_kernel[lambda meta: (kdsl.cdiv(n, meta["BLOCK"]),)](x, y, out, n)

The first launch with new key values times every config with OpenCL profiling
events (the median of repetitions after warm-up) and stores the fastest in the
device's tuning database (kdsl.tuning_db); later launches, in this process or
a new one, reuse it without timing. Configs that fail to build, exceed the
device's limits or fail to launch are skipped with a note. Each candidate is
first built and launched once in a child process, because some drivers
(PyPI's PoCL on some vector code) abort the whole process on a bad build.

`tune()` is the same machinery for any callable that launches kernels; the
`kdsl-autotune` command uses it on the library's wrappers.
"""
import importlib
import json
import os
import pickle
import select
import statistics
import subprocess
import sys
import tempfile
import traceback
import warnings

import numpy as np
import pyopencl as cl

from . import tuning_db
from .capture import capture_launches
from .device import as_device, current_device
from .errors import BuildError, CompileError, LaunchError

# Seconds a child process may spend on one candidate's build and first launch.
CHILD_TIMEOUT_S = 120


class Config:
    """One launch configuration: constexpr values plus the work-group size.

    >>> kdsl.Config({"BM": 8, "BN": 32}, num_threads=1).as_dict()
    {'BM': 8, 'BN': 32, 'num_threads': 1}
    """

    def __init__(self, kwargs, num_threads=None):
        kwargs = dict(kwargs)
        if "num_threads" in kwargs:
            if num_threads is not None:
                raise ValueError("kdsl.Config: num_threads given twice (in the dict and as "
                                 "an argument)")
            num_threads = kwargs.pop("num_threads")
        self.kwargs = kwargs
        self.num_threads = num_threads

    @classmethod
    def from_dict(cls, config):
        """The Config of a plain dict such as the database stores."""
        return config if isinstance(config, Config) else cls(config)

    def as_dict(self):
        """Constexprs plus "num_threads" (when set): the form library wrappers take."""
        out = dict(self.kwargs)
        if self.num_threads is not None:
            out["num_threads"] = self.num_threads
        return out

    def __eq__(self, other):
        return isinstance(other, Config) and self.as_dict() == other.as_dict()

    def __hash__(self):
        return hash(tuning_db.key_text(self.as_dict()))

    def __repr__(self):
        items = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"Config({items})"


class TuneResult:
    """What one tuning run found: the best config, every timing, and why configs were skipped."""

    def __init__(self, best, times, skipped, default=None):
        self.best = best                    # Config
        self.times = times                  # [(Config, seconds)], in the order timed
        self.skipped = skipped              # [(Config, note)]
        self.default = default              # Config or None

    @property
    def best_time(self):
        return dict(self.times)[self.best]

    @property
    def default_time(self):
        return dict(self.times).get(self.default) if self.default is not None else None

    @property
    def speedup(self):
        """Default time over best time, or None when there is no timed default."""
        return self.default_time / self.best_time if self.default_time else None


# ------------------------------------------------------------------ timing
def time_call(fn, warmup=2, rep=10, max_time_s=None, device=None, flush_cache=False):
    """The median device time of `fn()` in seconds, from OpenCL profiling data.

    The time of one call is the sum of the start-to-end times of the kdsl
    kernels it launched (a library wrapper may launch several), so host-side
    Python between launches is not counted: on a GPU it would swamp a
    microsecond kernel. A call that launches no kdsl kernel is timed by
    markers enqueued around it. `max_time_s` cuts the repetitions of a slow
    call: rep = clamp(max_time_s / first time, 1, rep).

    flush_cache: before each call, overwrite a buffer larger than the
    device's caches (not timed), so the call reads its operands from memory
    as a model's layer reads its weights once per step; timed hot, a
    CPU's FP4 GEMV looked 1.5-1.9x faster than in a decode step and the
    tuner ranked its configs by that (Triton's do_bench clears the L2 the
    same way).

    >>> time_call(lambda: matmul(a, b, config=cfg), warmup=2, rep=10)
    0.0123
    """
    device = as_device(device)
    if not device.queue_profiling:
        # a queue made for speed (the engine's): time on a profiling one, then go back
        priority = device.queue_priority
        device.set_queue_priority(priority, profiling=True)
        try:
            return time_call(fn, warmup, rep, max_time_s, device, flush_cache)
        finally:
            device.set_queue_priority(priority, profiling=False)
    queue = device.queue
    flush = _cache_flusher(device) if flush_cache else None
    first = None
    for _ in range(max(1, warmup)):
        first = _measure(fn, queue, flush)
    if max_time_s is not None and first > 0:
        rep = max(1, min(rep, int(max_time_s / first)))
    pending = [_enqueue_timed(fn, queue, flush) for _ in range(rep)]
    queue.finish()
    return statistics.median(_elapsed(p) for p in pending)


_FLUSH_BUFFERS = {}


def _cache_flusher(device):
    """A function that enqueues a fill of a buffer 4x the device's last-level
    cache (at least 64 MiB), evicting whatever a timed call would find there."""
    if device.fingerprint not in _FLUSH_BUFFERS:
        cache = device.cl_device.global_mem_cache_size or 0
        nbytes = min(max(64 << 20, 4 * cache), device.cl_device.max_mem_alloc_size)
        _FLUSH_BUFFERS[device.fingerprint] = cl.Buffer(device.context, cl.mem_flags.READ_WRITE,
                                                       nbytes)
    buffer = _FLUSH_BUFFERS[device.fingerprint]
    pattern = np.zeros(1, np.uint32)
    return lambda queue: cl.enqueue_fill_buffer(queue, buffer, pattern, 0, buffer.size)


def _measure(fn, queue, flush=None):
    pending = _enqueue_timed(fn, queue, flush)
    queue.finish()
    return _elapsed(pending)


def _enqueue_timed(fn, queue, flush=None):
    if flush is not None:
        flush(queue)          # before the start marker: not part of the call's time
    with capture_launches() as launches:
        start = cl.enqueue_marker(queue)
        fn()
        end = cl.enqueue_marker(queue)
    events = [launch.event for launch in launches if launch.event is not None]
    return events if events else (start, end)


def _elapsed(pending):
    if isinstance(pending, list):
        return sum(e.profile.end - e.profile.start for e in pending) * 1e-9
    start, end = pending
    # The start marker completes when everything queued before it has; the
    # end marker when the call's own commands have.
    return max(0, end.profile.end - start.profile.end) * 1e-9


# ------------------------------------------------------- child build checks
def check_in_child(trials, device=None, progress=None):
    """Run each trial `(function, args)` in a child process; one note (None = ok) per trial.

    A trial builds and launches one candidate config once. If the child dies
    (a driver abort), the trial it was running gets the note and a new child
    goes on with the rest, so the caller's process never runs a build that
    kills it. Functions must be importable by module and name (pickle).
    `progress(n)` is called as trials finish.

    >>> check_in_child([(autotune.kernels.trial, ("matmul", key, cfg))])
    [None]
    """
    device = as_device(device)
    notes = [None] * len(trials)
    position = 0
    while position < len(trials):
        done, crash = _run_child(trials[position:], device, notes, position, progress)
        position += done
        if crash is not None:
            notes[position] = crash
            position += 1
            if progress:
                progress(1)
    return notes


def _run_child(trials, device, notes, base, progress):
    """One child over `trials`; returns (how many it reported, note on the one it died on).

    The child reports each trial as a line as it finishes; one that takes
    more than CHILD_TIMEOUT_S (a build that never ends) is killed and noted.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               KDSL_DEVICE=str(device.index), KDSL_AUTOTUNE_CHILD=device.fingerprint)
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen([sys.executable, "-m", "kdsl.autotuner"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                 env=env)
        try:
            done, timed_out = _read_reports(child, trials, notes, base, progress)
        finally:                    # Ctrl-C or a timeout: leave no child building behind
            if child.poll() is None:
                child.kill()
            child.wait()
        if done == len(trials):
            return done, None
        if timed_out:
            return done, (f"its build and first launch took more than {CHILD_TIMEOUT_S} s; "
                          "stopped")
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace").strip().splitlines()[-3:]
    return done, (f"the driver killed the build process (exit code {child.returncode})"
                  + (f": {' / '.join(tail)}" if tail else ""))


def _read_reports(child, trials, notes, base, progress):
    """Feed `trials` to the child and collect its report lines; returns (done, timed out)."""
    child.stdin.write(pickle.dumps(trials))
    child.stdin.close()
    done = 0
    while done < len(trials):
        ready, _, _ = select.select([child.stdout], [], [], CHILD_TIMEOUT_S)
        if not ready:
            return done, True
        line = child.stdout.readline().decode(errors="replace")
        if not line:                # the child exited (or died) before reporting all
            return done, False
        if not line.startswith("{"):
            continue                # a driver's own chatter on stdout
        report = json.loads(line)
        notes[base + report["index"]] = report["error"]
        done = report["index"] + 1
        if progress:
            progress(1)
    return done, False


def _child_main():
    """`python -m kdsl.autotuner`: run pickled trials from stdin, report each as a JSON line."""
    expected = os.environ.get("KDSL_AUTOTUNE_CHILD")
    if expected is not None and current_device().fingerprint != expected:
        sys.exit(f"kdsl.autotuner child: device {current_device()} is not {expected!r}")
    trials = pickle.loads(sys.stdin.buffer.read())
    for index, (function, args) in enumerate(trials):
        try:
            function(*args)
            current_device().queue.finish()
            error = None
        except Exception as exc:        # every failure is a note about this config
            error = _describe(exc)
        print(json.dumps({"index": index, "error": error}), flush=True)


def _describe(exc):
    """A one-paragraph note about why a config failed."""
    if isinstance(exc, (BuildError, CompileError, LaunchError)):
        text = str(exc)
    else:
        text = "".join(traceback.format_exception_only(type(exc), exc))
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:400] + " ..."


# ------------------------------------------------------------------- tune
def tune(kernel_name, key, configs, run, *, trial=None, default=None, warmup=2, rep=10,
         max_time_s=0.5, device=None, record=True, flush_cache=False):
    """Time `run(config)` for each config; store and return the best as a TuneResult.

    `trial(config)` gives a picklable `(function, args)` that builds and
    launches `config` once; with it every candidate is checked in a child
    process first (see check_in_child). `default` (a config also timed, even
    if not in `configs`) is what the speedup is measured against. Configs that
    fail are skipped with a note; if all fail, RuntimeError lists why.
    flush_cache: time each call with the device's caches flushed first
    (time_call), for kernels whose operands come from memory in real use.

    >>> tune("matmul", {"M": 16, "N": 4096, "K": 4096}, space,
    ...      lambda cfg: matmul(a, b, config=cfg.as_dict()))
    """
    device = as_device(device)
    configs = [Config.from_dict(c) for c in configs]
    default = Config.from_dict(default) if default is not None else None
    timing = dict(warmup=warmup, rep=rep, max_time_s=max_time_s, device=device,
                  flush_cache=flush_cache)
    candidates = list(dict.fromkeys(([default] if default is not None else []) + configs))
    skipped = []
    fitting = []
    for config in candidates:
        if (config.num_threads or 1) > device.max_work_group_size:
            skipped.append((config, f"num_threads={config.num_threads} exceeds the device's "
                                    f"maximum work-group size {device.max_work_group_size}"))
        else:
            fitting.append(config)
    if trial is not None and fitting:
        notes = check_in_child([trial(c) for c in fitting], device)
        skipped += [(c, note) for c, note in zip(fitting, notes) if note is not None]
        fitting = [c for c, note in zip(fitting, notes) if note is None]
    times = []
    for config in fitting:
        try:
            seconds = time_call(lambda: run(config), **timing)
        except (BuildError, CompileError, LaunchError, cl.Error) as exc:
            skipped.append((config, _describe(exc)))
            continue
        times.append((config, seconds))
    if not times:
        reasons = "\n".join(f"  {c}: {note}" for c, note in skipped) or "  (no configs given)"
        raise RuntimeError(f"autotune {kernel_name} {key}: no config ran; skipped:\n{reasons}")
    best = min(times, key=lambda item: item[1])[0]
    timed = dict(times)
    if default in timed and best != default:
        timed[best], timed[default] = _confirm(run, best, default, timing)
        if timed[default] <= timed[best]:
            best = default
        times = list(timed.items())
    result = TuneResult(best, times, skipped, default)
    if record:
        tuning_db.database(device).record(
            kernel_name, key, best.as_dict(), result.best_time,
            default_config=default.as_dict() if default is not None else None,
            default_time_s=result.default_time,
            candidates=len(candidates),
            skipped=[{"config": c.as_dict(), "note": note} for c, note in skipped])
    return result


def _confirm(run, best, default, timing, rounds=3):
    """Times of `best` and `default` measured again, alternately, so that load from other
    processes during the sweep does not flatter either one; medians over the rounds."""
    best_times, default_times = [], []
    for _ in range(rounds):
        for config, times in ((default, default_times), (best, best_times)):
            times.append(time_call(lambda: run(config), **timing))
    return statistics.median(best_times), statistics.median(default_times)


# ------------------------------------------------------- the decorator
def autotune(configs, key, prune_configs_by=None, warmup=2, rep=10, restore_value=None):
    """Decorator over a `@kdsl.jit` kernel: pick the fastest of `configs` per key values.

    key: names of arguments whose values select the tuning entry (a tensor
    argument contributes its dtype and shape). prune_configs_by: Triton's
    dict, with "early_config_prune" (configs, named_args) -> configs and
    optionally "perf_model" (named_args, **config) -> estimated time with
    "top_k" (how many of the best estimates to time). restore_value: names of
    tensor arguments the kernel updates in place; they are saved before
    timing and restored after, so the real launch sees the original values.
    Environment: KDSL_AUTOTUNE=0 never times; an untuned key then takes the
    nearest tuned key's config, else the first config.
    """
    configs = [Config.from_dict(c) for c in configs]
    if not configs:
        raise ValueError("kdsl.autotune: configs is empty; give at least one kdsl.Config")

    def decorator(fn):
        return Autotuner(fn, configs, list(key), prune_configs_by, warmup, rep,
                         list(restore_value or []))
    return decorator


class Autotuner:
    """A kernel wrapped by @kdsl.autotune; launch it as `kernel[grid](*args)` without the
    tuned constexprs."""

    def __init__(self, fn, configs, key, prune_configs_by, warmup, rep, restore_value):
        from .jit import JITFunction
        if not isinstance(fn, JITFunction):
            raise TypeError("kdsl.autotune must decorate a @kdsl.jit kernel (put @kdsl.autotune "
                            "above @kdsl.jit)")
        unknown = [name for name in key + restore_value if name not in fn.arg_names]
        if unknown:
            raise ValueError(f"kdsl.autotune({fn.__name__}): {', '.join(unknown)} is not an "
                             f"argument of the kernel; its arguments are "
                             f"{', '.join(fn.arg_names)}")
        self.fn = fn
        self.__name__ = fn.__name__
        self.configs = configs
        self.key = key
        self.prune_configs_by = prune_configs_by or {}
        self.warmup = warmup
        self.rep = rep
        self.restore_value = restore_value
        self.kernel_name = f"{fn.fn.__module__}.{fn.fn.__qualname__}"
        self.cache = {}             # (device fingerprint, key text) -> Config
        self.last_result = None     # the TuneResult of the latest tuning, for inspection

    def __getitem__(self, grid):
        def launcher(*args, **kwargs):
            return self.run(grid, args, kwargs)
        return launcher

    def __repr__(self):
        return f"<kdsl.autotune of {self.fn!r}, {len(self.configs)} configs, key={self.key}>"

    def key_values(self, named):
        """The tuning key of one launch's named arguments."""
        from .tensor import Tensor
        values = {}
        for name in self.key:
            value = named.get(name)
            if isinstance(value, (Tensor, np.ndarray)):
                value = f"{value.dtype}{list(value.shape)}"
            values[name] = value
        return values

    def run(self, grid, args, kwargs):
        if len(args) > len(self.fn.arg_names):
            raise LaunchError(f"{self.__name__}() takes {len(self.fn.arg_names)} arguments "
                              f"but {len(args)} were given")
        named = dict(zip(self.fn.arg_names, args))
        named.update(kwargs)
        device = current_device()
        key = self.key_values(named)
        cache_key = (device.fingerprint, tuning_db.key_text(key))
        config = self.cache.get(cache_key)
        if config is None:
            config = self._stored_or_tuned(grid, named, key, device)
            self.cache[cache_key] = config
        return self.fn[grid](**named, **config.kwargs, **self._threads(config))

    @staticmethod
    def _threads(config):
        return {} if config.num_threads is None else {"num_threads": config.num_threads}

    def _stored_or_tuned(self, grid, named, key, device):
        db = tuning_db.database(device)
        entry = db.lookup(self.kernel_name, key)
        if entry is not None:
            return Config.from_dict(entry["config"])
        if os.environ.get("KDSL_AUTOTUNE", "1").strip().lower() in ("0", "off", "false"):
            entry = db.nearest(self.kernel_name, key)
            return Config.from_dict(entry["config"]) if entry else self.configs[0]
        return self._tune(grid, named, key, device)

    def prune(self, named):
        """The configs worth timing for these arguments (Triton's prune_configs_by)."""
        configs = list(self.configs)
        early = self.prune_configs_by.get("early_config_prune")
        if early is not None:
            configs = list(early(configs, dict(named)))
        model = self.prune_configs_by.get("perf_model")
        if model is not None:
            top_k = self.prune_configs_by.get("top_k", len(configs))
            if isinstance(top_k, float):
                top_k = max(1, int(len(configs) * top_k))
            configs = sorted(configs, key=lambda c: model(**named, **c.kwargs))[:top_k]
        return configs

    def _tune(self, grid, named, key, device):
        from .tensor import Tensor
        configs = self.prune(named)
        saved = {name: named[name].numpy() for name in self.restore_value
                 if isinstance(named[name], Tensor)}

        def run(config):
            return self.fn[grid](**named, **config.kwargs, **self._threads(config))

        trial = None
        if _importable(self.fn):
            specs = {name: _arg_spec(value) for name, value in named.items()}
            trial = (lambda config: (_trial_launch, (self.fn.fn.__module__,
                                                     self.fn.fn.__qualname__, specs,
                                                     config.kwargs, config.num_threads)))
        else:
            warnings.warn(f"kdsl.autotune: {self.kernel_name} cannot be imported by a child "
                          "process (define it at module level of an importable module), so "
                          "its candidates are built in this process", stacklevel=4)
        try:
            result = tune(self.kernel_name, key, configs, run, trial=trial,
                          default=self.configs[0], warmup=self.warmup, rep=self.rep,
                          device=device)
        finally:
            for name, values in saved.items():
                named[name].copy_from(values)
        for config, note in result.skipped:
            warnings.warn(f"kdsl.autotune: {self.kernel_name} skipped {config}: {note}",
                          stacklevel=4)
        self.last_result = result
        return result.best


def _importable(jit_fn):
    return jit_fn.fn.__module__ != "__main__" and "<locals>" not in jit_fn.fn.__qualname__


def _arg_spec(value):
    """A picklable stand-in for one launch argument: the shape of its memory, not its data."""
    from .tensor import Tensor
    if isinstance(value, Tensor):
        return ("tensor", value.shape, str(value.dtype), value.offset + value.span(),
                value.offset, value.strides)
    if isinstance(value, np.ndarray):
        return ("array", value.shape, str(value.dtype))
    return ("value", value)


def _trial_launch(module, qualname, specs, constexprs, num_threads):
    """In the child: build and launch one config once, on zero-filled stand-ins, one program."""
    from .tensor import Tensor, zeros
    fn = importlib.import_module(module)
    for part in qualname.split("."):
        fn = getattr(fn, part)
    if isinstance(fn, Autotuner):
        fn = fn.fn
    args = {}
    for name, spec in specs.items():
        if spec[0] == "tensor":
            _, shape, dtype, extent, offset, strides = spec
            flat = zeros((max(1, extent),), dtype)
            args[name] = Tensor(flat.buffer, shape, dtype, flat.device, offset, strides)
        elif spec[0] == "array":
            args[name] = np.zeros(spec[1], spec[2])
        else:
            args[name] = spec[1]
    threads = {} if num_threads is None else {"num_threads": num_threads}
    # One program compiles the whole kernel for this work-group size: enough to
    # find a build that crashes, at a fraction of the real launch's cost.
    fn[(1,)](**args, **constexprs, **threads)


if __name__ == "__main__":
    _child_main()
