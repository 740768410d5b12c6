"""Start-up: how long a new user waits for the engine's answer, cold and warm, beside transformers.

    python3 bench/startup.py [--rounds N] [--quick] [--json PATH] [--no-plot]

Each measurement is a new process, as a user's command is:

  kdsl cold   `python3 -m engine run PROMPT` with empty kernel caches (kdsl's
              and PoCL's, in a temporary folder) and the engine's prepared
              weights copied in from a first run: the kernels compile.
  kdsl warm   the same command again on those caches.
  transformers  the same GGUF loaded by Hugging Face transformers (torch,
              CPU), the chat prompt tokenised and 8 tokens generated
              greedily, where transformers, torch and accelerate (which
              transformers needs to read GGUF) are installed.

Columns: wall s (the whole command, imports and model load included) and,
for kdsl, time to first token from its --timings line. `vs transformers`
is transformers' wall / kdsl's wall; > 1 means kdsl answers sooner.
`--quick` skips the cold rounds: kdsl warm and transformers only (the one
first run that prepares the weights still compiles the kernels).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's kdsl and bench

import kdsl
from bench import common

REPO = Path(__file__).resolve().parents[1]
PROMPT = "What is the capital of France?"
NEW_TOKENS = 8

TRANSFORMERS = r'''
import os, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
folder, name = os.path.dirname(path), os.path.basename(path)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
inputs = tok.apply_chat_template([{"role": "user", "content": sys.argv[2]}],
                                 add_generation_prompt=True, return_tensors="pt",
                                 return_dict=True)
model.generate(**inputs, max_new_tokens=int(sys.argv[3]), do_sample=False)
'''


def run(cmd, env):
    """(wall seconds, stdout + stderr) of a command in a new process; raises on failure."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{done.stderr[-2000:]}")
    return wall, done.stdout + done.stderr


def kdsl_run(cache, env):
    cmd = [sys.executable, "-m", "engine", "run", "--timings", "--max-new-tokens",
           str(NEW_TOKENS), PROMPT]
    wall, out = run(cmd, dict(env, KDSL_CACHE_DIR=str(cache / "kdsl"),
                              POCL_CACHE_DIR=str(cache / "pocl")))
    first = re.search(r"first token after (\d+) ms", out)
    return wall, int(first.group(1)) / 1e3 if first else None


def transformers_run(env):
    import importlib.util
    missing = [m for m in ("transformers", "torch", "accelerate")
               if importlib.util.find_spec(m) is None]
    if missing:       # transformers reads a GGUF file only with accelerate installed
        print(f"note: no transformers peer ({', '.join(missing)} not installed)")
        return None
    from engine.llm import default_model_path
    wall, _ = run([sys.executable, "-c", TRANSFORMERS, default_model_path(), PROMPT,
                   str(NEW_TOKENS)], env)
    return wall


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv, rounds=2)
    device = kdsl.current_device()
    print(f"device: {device}")
    common.warn_if_busy()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepared = tmp / "prepared"
        # one first run prepares the weights (quantisation), kept for every cold run
        kdsl_run(prepared, env)
        for r in range(args.rounds):
            cache = tmp / f"round{r}"
            (cache / "kdsl").mkdir(parents=True)
            shutil.copytree(prepared / "kdsl" / "engine", cache / "kdsl" / "engine")
            if args.quick:
                shutil.copytree(prepared / "pocl", cache / "pocl", dirs_exist_ok=True)
                shutil.copytree(prepared / "kdsl", cache / "kdsl", dirs_exist_ok=True)
            else:
                rows.append(dict(round=r, run="kdsl cold", **_kdsl_row(*kdsl_run(cache, env))))
            rows.append(dict(round=r, run="kdsl warm", **_kdsl_row(*kdsl_run(cache, env))))
            peer = transformers_run(env)
            if peer is not None:
                rows.append(dict(round=r, run="transformers", wall_s=peer, first_s=None))
    peers = [row["wall_s"] for row in rows if row["run"] == "transformers"]
    for row in rows:
        row["vs_transformers"] = round(min(peers) / row["wall_s"], 2) if peers else None
    print(f"\nengine start-up, best of {args.rounds} rounds; each a new process: "
          f"'{PROMPT}', {NEW_TOKENS} new tokens")
    best = {}
    for row in rows:
        if row["run"] not in best or row["wall_s"] < best[row["run"]]["wall_s"]:
            best[row["run"]] = row
    common.print_table(list(best.values()), [
        ("run", "run", "{}"), ("wall_s", "wall s", "{:.1f}"),
        ("first_s", "first token s", "{}"), ("vs_transformers", "vs transformers", "{}")])
    path = common.write_results("startup", device, rows, extra={"prompt": PROMPT,
                                                                 "new_tokens": NEW_TOKENS},
                                path=args.json)
    print(f"wrote {path}")
    if not args.no_plot:
        series = {}
        for row in rows:
            xs, ys = series.setdefault(row["run"], ([], []))
            xs.append(row["round"] + 1)
            ys.append(row["wall_s"])
        common.plot_results(path.with_suffix(".png"), f"kdsl-llm start-up on {device.name}",
                            series, "round", "seconds to the answer")


def _kdsl_row(wall, first):
    return {"wall_s": wall, "first_s": round(first, 2) if first is not None else None}


if __name__ == "__main__":
    main()
