"""`kdsl-autotune` (also `python -m autotune`): tune the library's kernels for this device, once.

    kdsl-autotune                       tune every kernel at the standard LLM shapes
    kdsl-autotune --model PATH          ... at the shapes this model runs (HF folder or .gguf)
    kdsl-autotune --kernels matmul,softmax --budget 10
    kdsl-autotune show                  what is tuned, and the speedup over the defaults
    kdsl-autotune export FILE           write this device's database (to ship with an app)
    kdsl-autotune import FILE           merge a database tuned on a device of the same kind

Each tuned (kernel, shape) is saved as soon as it is measured, so an
interrupted run (Ctrl-C, or --budget running out) resumes where it stopped.
"""
import argparse
import math
import sys
import time
import warnings

from tqdm import tqdm

import kdsl
from kdsl import autotuner, tuning_db

from . import shapes, spaces

COMMANDS = ("tune", "show", "export", "import")


def main(argv=None):
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv.insert(0, "tune")
    args = _parser().parse_args(argv)
    try:
        if args.device is not None:
            kdsl.set_device(args.device)
        return args.run(args)
    except ValueError as error:
        print(f"kdsl-autotune: {error}", file=sys.stderr)
        return 2


def _parser():
    parser = argparse.ArgumentParser(
        prog="kdsl-autotune", description="Tune kdsl's kernels for this OpenCL device and store "
        "the best configs in its tuning database (under KDSL_CACHE_DIR).",
        epilog="With no command, `tune` runs; `kdsl-autotune tune --help` lists its options "
        "(--model, --kernels, --budget, ...).")
    commands = parser.add_subparsers(dest="command")
    tune = commands.add_parser("tune", help="tune kernels (the default command)")
    tune.add_argument("--model", help="a Hugging Face model folder, its config.json or a .gguf "
                      "file: tune the shapes it runs")
    tune.add_argument("--standard", default="smollm2-135m", choices=sorted(shapes.STANDARD),
                      help="standard shapes to tune when no --model is given "
                      "(default: %(default)s)")
    tune.add_argument("--kernels", default=",".join(spaces.KERNELS),
                      help="comma-separated kernels to tune (default: %(default)s)")
    tune.add_argument("--prefill", default=None,
                      help="comma-separated M of prefill chunks (default: the engine's chunk "
                      "on this device: " + ", ".join(f"{n} on a {kind.upper()}" for kind, n in
                                                    shapes.ENGINE_PREFILL_CHUNK.items()) + ")")
    tune.add_argument("--contexts", default="256,1024", help="comma-separated attention lengths "
                      "for softmax (default: %(default)s)")
    tune.add_argument("--budget", type=float, default=None, metavar="MIN",
                      help="stop starting new shapes after MIN minutes (rerun to resume)")
    tune.add_argument("--max-configs", type=int, default=spaces.MAX_CONFIGS,
                      help="configs timed per shape at most (default: %(default)s)")
    tune.add_argument("--retune", action="store_true", help="tune shapes already in the database")
    tune.set_defaults(run=_tune)
    show = commands.add_parser("show", help="print what is tuned and the speedup over defaults")
    show.add_argument("--kernel", help="only this kernel")
    show.set_defaults(run=_show)
    export = commands.add_parser("export", help="write this device's database to FILE")
    export.add_argument("file")
    export.set_defaults(run=_export)
    imp = commands.add_parser("import", help="merge a database exported on a device of the "
                              "same kind")
    imp.add_argument("file")
    imp.add_argument("--force", action="store_true", help="import even from another kind "
                     "of device")
    imp.set_defaults(run=_import)
    for sub in (tune, show, export, imp):
        sub.add_argument("--device", default=None, help="OpenCL device: an index or part of "
                         "its name (default: KDSL_DEVICE, else the first GPU, else the CPU)")
    return parser


def _int_list(text, option):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ValueError(f"{option} values must be >= 1, got {text!r}")
    return values


# ------------------------------------------------------------------- tune
def _tune(args):
    device = kdsl.current_device()
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = [k for k in kernels if k not in spaces.KERNELS]
    if unknown:
        raise ValueError(f"unknown kernel(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(spaces.KERNELS)}")
    if args.max_configs < 1:
        raise ValueError(f"--max-configs must be >= 1, got {args.max_configs}")
    dims = shapes.model_dims(args.model) if args.model else shapes.STANDARD[args.standard]
    for kernel in list(kernels):
        reason = spaces.KERNELS[kernel].unavailable()
        if reason:
            print(f"note: not tuning {kernel}: {reason}")
            kernels.remove(kernel)
    prefill = args.prefill or str(shapes.ENGINE_PREFILL_CHUNK["cpu" if device.is_cpu else "gpu"])
    todo_all = shapes.tasks(dims, prefill=_int_list(prefill, "--prefill"),
                            contexts=_int_list(args.contexts, "--contexts"), kernels=kernels)
    db = tuning_db.database(device)
    todo = [t for t in todo_all if args.retune or db.lookup(t.kernel, t.key) is None]
    print(f"device: {device.fingerprint}")
    print(f"shapes of {dims.name}: {len(todo)} of {len(todo_all)} shapes to tune, "
          f"{len(todo_all) - len(todo)} already in {db.path}")
    deadline = time.monotonic() + args.budget * 60 if args.budget is not None else math.inf
    done = 0
    try:
        with tqdm(todo, unit="shape", dynamic_ncols=True) as bar:
            for task in bar:
                if time.monotonic() > deadline:
                    bar.write(f"budget of {args.budget:g} min used; run again to tune the "
                              f"{len(todo) - done} shapes left")
                    break
                bar.set_description(f"{task.kernel} {_key_label(task.key)}")
                bar.write(_tune_one(task, device, args.max_configs))
                done += 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: {done} shapes saved in {db.path}; run kdsl-autotune again to "
              "resume", file=sys.stderr)
        return 130
    return 0


def _tune_one(task, device, max_configs):
    """Tune one task; returns the line to print."""
    tunable = spaces.KERNELS[task.kernel]
    label = f"{task.kernel:9} {_key_label(task.key):32}"
    try:
        default = spaces.default_config(task.kernel, task.key, device)
        space = tunable.space(device, task.key, max_configs)
        operands = spaces.inputs(task.kernel, task.key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # skipped configs are reported below instead
            result = autotuner.tune(
                task.kernel, task.key, space,
                lambda config: spaces.launch(task.kernel, task.key, config.as_dict(), operands),
                trial=lambda config: (spaces.trial, (task.kernel, task.key, config.as_dict())),
                default=default, device=device, flush_cache=tunable.cold)
    except RuntimeError as error:
        return f"{label} FAILED: {error}"
    line = (f"{label} {_config_label(result.best.as_dict()):34} "
            f"{result.best_time * 1e6:9.1f} us  {_speedup_label(result.speedup)} over default")
    if result.skipped:
        line += f"  ({len(result.skipped)} configs skipped: {result.skipped[0][1][:80]})"
    return line


# ------------------------------------------------------------------- show
def _show(args):
    db = tuning_db.database()
    entries = [(k, e) for k, e in db.entries() if args.kernel in (None, k)]
    print(f"device: {db.device.fingerprint}\ndatabase: {db.path}")
    if not entries:
        print("nothing tuned yet: run kdsl-autotune")
        return 0
    print(f"{'kernel':10} {'key':36} {'best config':40} {'time':>10} {'default':>10} "
          f"{'speedup':>8}")
    speedups = {}
    for kernel, entry in entries:
        default_time = entry.get("default_time_s")
        speedup = default_time / entry["time_s"] if default_time else None
        if speedup:
            speedups.setdefault(kernel, []).append(speedup)
        print(f"{kernel:10} {_key_label(entry['key']):36} {_config_label(entry['config']):40} "
              f"{entry['time_s'] * 1e6:8.1f}us "
              f"{(f'{default_time * 1e6:8.1f}us') if default_time else '-':>10} "
              f"{_speedup_label(speedup):>8}")
    print("\nper kernel (geometric mean of the speedup over the default config):")
    for kernel, values in speedups.items():
        mean = math.exp(sum(math.log(v) for v in values) / len(values))
        print(f"  {kernel:10} {mean:5.2f}x over {len(values)} shapes "
              f"(min {min(values):.2f}x, max {max(values):.2f}x)")
    return 0


def _export(args):
    count = tuning_db.database().export(args.file)
    print(f"wrote {count} tuned entries to {args.file}")
    return 0


def _import(args):
    count = tuning_db.database().import_file(args.file, force=args.force)
    print(f"imported {count} tuned entries into {tuning_db.database().path}")
    return 0


def _key_label(key):
    return " ".join(f"{k}={v}" for k, v in key.items())


def _config_label(config):
    return " ".join(f"{k}={v}" for k, v in config.items())


def _speedup_label(speedup):
    return f"{speedup:.2f}x" if speedup else "-"
