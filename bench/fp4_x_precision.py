"""What the FP4 decode GEMV's precision of x costs a real model.

    python3 bench/fp4_x_precision.py [--steps 160] [--json PATH]

SmolLM2-135M (the engine's default model) scores a fixed English text one
token at a time (teacher-forced decode steps after a 3-token prompt), once
with fp32 weights and once per form of the m0e4 decode GEMV: the float word
kernel (x in float), the CPU's int16 lanes (x truncated to int16 per group),
and the integer-product kernel (kdsl_kernels/fp4_idot.py) with x rounded to
int16 or int8. The integer sums are exact, so a CPU device gives the numbers
NVIDIA's dp2a / dp4a would. Per form: perplexity over the steps, the share
of steps whose top token equals the fp32 engine's, and the largest logit
change relative to the largest fp32 logit. Prints a markdown table (for
docs/fp4.md) and writes bench/results/fp4_x_precision.json.
"""
import argparse
import inspect
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kdsl_kernels.fp4_kernels as fp4_kernels  # noqa: E402
from engine import LLM  # noqa: E402
from engine.generate import score  # noqa: E402

# the decode GEMV's config per form (None: the device's default)
FORMS = {
    "float x (word kernel)": {"BN": 8, "BW": 8, "DEQ": "convert", "num_threads": 1},
    "device default": None,
    "int16 x, rounded (idot)": {"lanes": "idot", "BN": 8, "BW": 8, "XBITS": 16,
                                "num_threads": 1},
    "int8 x, rounded (idot)": {"lanes": "idot", "BN": 8, "BW": 8, "XBITS": 8,
                               "num_threads": 1},
}


def fixed_text():
    """English prose that does not change with this repository: stdlib docstrings."""
    import argparse as a, json as j, logging as l, unittest as u
    return "\n\n".join(inspect.getdoc(m) for m in (a, j, u, l))


def decode_logits(llm, ids):
    """Logits of decode steps over ids[3:] (each step's prediction of the next id)."""
    llm.generator.cached_ids = []
    score(llm.generator, ids[:3])
    return np.concatenate([llm.model.forward(np.array([t], np.int32), 3 + i).numpy()
                           for i, t in enumerate(ids[3:-1])]).astype(np.float64)


def perplexity(logits, targets):
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(targets)), targets].mean()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / "fp4_x_precision.json")
    args = parser.parse_args()
    default_gemv = fp4_kernels.gemv_default
    fp32 = LLM.load(None, quant="fp32", progress=False)
    ids = fp32.tokenizer.encode(fixed_text())[: args.steps + 4]
    targets = np.array(ids[4:])
    ref = decode_logits(fp32, ids)
    rows = [{"form": "fp32 weights", "perplexity": perplexity(ref, targets),
             "top1_agreement": 1.0, "max_logit_change": 0.0}]
    for name, config in FORMS.items():
        fp4_kernels.gemv_default = (default_gemv if config is None else
                                    lambda device, K=None, c=config: dict(c))
        try:
            llm = LLM.load(None, quant="m0e4", progress=False)
            logits = decode_logits(llm, ids)
        finally:
            fp4_kernels.gemv_default = default_gemv
        rows.append({"form": f"m0e4, {name}", "perplexity": perplexity(logits, targets),
                     "top1_agreement": float(np.mean(logits.argmax(1) == ref.argmax(1))),
                     "max_logit_change": float(np.abs(logits - ref).max() / np.abs(ref).max())})
        print(rows[-1], flush=True)
    print(f"\n{len(targets)} decode steps\n\n| decode GEMV's x | perplexity | top-1 agreement "
          "with fp32 | largest logit change / largest logit |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['form']} | {r['perplexity']:.3f} | {r['top1_agreement']:.3f} | "
              f"{r['max_logit_change']:.3f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"steps": len(targets), "rows": rows}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
