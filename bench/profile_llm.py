"""Where an engine step's time goes: device time per kernel and host Python per call.

    python3 bench/profile_llm.py                        # the embedded SmolLM2, m0e4
    python3 bench/profile_llm.py --model DIR_OR_GGUF --quant fp16 --steps 32

Three measurements of one model on the current device:

1. Wall time of replayed steps (as generation runs them): a decode step, and
   a prefill chunk, each followed by reading its logits back.
2. Device time per kernel of one eager decode step and one eager prefill
   chunk, from OpenCL profiling events: what the device itself spends.
3. A cProfile of replayed decode steps: the host Python functions that
   dominate when the device is fast (a GPU) and launches are the cost.

The gap between (1) and the device sum of (2) is host time the device waits
for. Prints tables; writes nothing.
"""
import argparse
import collections
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kdsl  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF file or HF folder (default: embedded)")
    parser.add_argument("--quant", default="m0e4")
    parser.add_argument("--steps", type=int, default=32, help="decode steps per timing")
    parser.add_argument("--past", type=int, default=256, help="cached tokens before decoding")
    parser.add_argument("--top", type=int, default=15, help="rows of each table")
    return parser.parse_args(argv)


def kernel_times(run):
    """{(kernel, grid): (calls, device seconds)} of the launches `run()` makes."""
    with kdsl.capture_launches() as records:
        run()
    totals = collections.defaultdict(lambda: [0, 0.0])
    for r in records:
        if r.event is None:
            continue
        r.event.wait()
        row = totals[(r.jit_fn.__name__, r.grid)]
        row[0] += 1
        row[1] += (r.event.profile.end - r.event.profile.start) * 1e-9
    return totals


def print_kernels(title, totals, top):
    total = sum(t for _, t in totals.values())
    calls = sum(c for c, _ in totals.values())
    print(f"\n{title}: {calls} launches, device sum {total * 1e3:.2f} ms")
    for (name, grid), (count, t) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"  {t * 1e3:8.3f} ms {100 * t / total:5.1f}%  {count:4d}x  {name} grid={grid}")


def main(argv=None):
    args = parse_args(argv)
    from engine import LLM
    # room for: the cache fill, 2 x (4 + steps) decode steps, 3 timed chunks and
    # an eager chunk (chunks of up to 256 tokens, the GPU default)
    llm = LLM.load(args.model, quant=args.quant,
                   context=args.past + 2 * (args.steps + 4) + 4 * 256 + 2)
    model, chunk = llm.model, llm.model.chunk
    print(f"device: {model.device!r}; model {llm.config.n_layers} layers, chunk {chunk}")
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, llm.config.vocab, args.past).astype(np.int32)
    for start in range(0, args.past, chunk):          # fill the cache; records the chunk replay
        model.forward(prompt[start:start + chunk], start)
    past = args.past
    token = np.array([1], np.int32)

    def decode_steps(n):
        nonlocal past
        for _ in range(n):
            model.forward(token, past).numpy()
            past += 1
    decode_steps(4)                                    # records and verifies the decode replay
    start = time.perf_counter()
    decode_steps(args.steps)
    decode_s = (time.perf_counter() - start) / args.steps
    ids = rng.integers(0, llm.config.vocab, chunk).astype(np.int32)
    model.device.queue.finish()
    start = time.perf_counter()
    for i in range(3):
        model.forward(ids, past + i * chunk).numpy()
    chunk_s = (time.perf_counter() - start) / 3
    past += 3 * chunk
    print(f"replayed decode step (with logits read back): {decode_s * 1e3:.2f} ms "
          f"= {1 / decode_s:.1f} tok/s")
    print(f"replayed prefill chunk of {chunk}: {chunk_s * 1e3:.2f} ms = "
          f"{chunk / chunk_s:.1f} tok/s")

    # eager steps, every launch captured, on a queue whose events carry times
    # (the engine's own queue has profiling off)
    model.device.set_queue_priority(model.device.queue_priority, profiling=True)
    graph, model.graph = model.graph, None
    decode = kernel_times(lambda: model.forward(token, past))
    prefill = kernel_times(lambda: model.forward(ids, past + 1))
    model.graph = graph
    print_kernels("eager decode step", decode, args.top)
    print_kernels(f"eager prefill chunk of {chunk}", prefill, args.top)

    decode_steps(4)
    profile = cProfile.Profile()
    profile.enable()
    decode_steps(args.steps)
    profile.disable()
    print(f"\nhost Python of {args.steps} replayed decode steps (cProfile, by own time):")
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
