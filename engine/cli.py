"""`kdsl-llm`: run a prompt, chat in the terminal, or measure prefill and decode speed.

    kdsl-llm run "What is the capital of France?"
    kdsl-llm chat --quant fp16
    kdsl-llm bench --prompt-tokens 512 --gen-tokens 128
"""
import argparse
import sys

from .config import ModelFormatError
from .first_token_wait import FirstTokenWait
from .generate import bench_ids
from .weights import QUANTS


def _parser():
    parser = argparse.ArgumentParser(prog="kdsl-llm", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="a .gguf file or a Hugging Face folder "
                                        "(default: the embedded SmolLM2-135M-Instruct)")
    common.add_argument("--quant", choices=QUANTS, default="m0e4",
                        help="weight format on the device (default m0e4, FP4)")
    common.add_argument("--device", help="OpenCL device index or name part (default: kdsl's)")
    common.add_argument("--context", type=int, help="positions the KV cache holds")
    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("--max-new-tokens", type=int, default=256)
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    sampling.add_argument("--top-k", type=int, default=0)
    sampling.add_argument("--top-p", type=float, default=1.0)
    sampling.add_argument("--repetition-penalty", type=float, default=1.0)
    sampling.add_argument("--seed", type=int)
    sampling.add_argument("--timings", action="store_true", help="print prefill/decode speed")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[common, sampling],
                              help="answer one prompt (through the chat template, if any)")
    run.add_argument("prompt")
    run.add_argument("--raw", action="store_true",
                     help="continue the prompt as plain text, without the chat template")
    run.add_argument("--truncate", action="store_true",
                     help="keep the prompt's last tokens if it does not fit the context")
    commands.add_parser("chat", parents=[common, sampling], help="talk interactively")
    bench = commands.add_parser("bench", parents=[common], help="prefill and decode tok/s")
    bench.add_argument("--prompt-tokens", type=int, default=512)
    bench.add_argument("--gen-tokens", type=int, default=128)
    bench.add_argument("--repeat", type=int, default=2, help="runs; the best is reported")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    from .llm import LLM
    try:
        llm = LLM.load(args.model, quant=args.quant, device=args.device, context=args.context)
        if args.command == "run":
            return _run(llm, args)
        if args.command == "chat":
            return _chat(llm, args)
        return _bench(llm, args)
    except (ModelFormatError, FileNotFoundError, ValueError) as error:
        print(f"kdsl-llm: error: {error}", file=sys.stderr)
        return 2


def _sampling(args):
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed)


def _run(llm, args):
    if args.raw or not llm.tokenizer.chat_template:
        pieces = llm.stream(args.prompt, truncate=args.truncate, **_sampling(args))
    else:
        pieces = llm.chat([{"role": "user", "content": args.prompt}], stream=True,
                          truncate=args.truncate, **_sampling(args))
    _print_pieces(pieces)
    print()
    if args.timings:
        print(llm.timings.summary(), file=sys.stderr)
    return 0


def _print_pieces(pieces):
    """Print the streamed pieces as they come; the elapsed wait until the first (FirstTokenWait)."""
    shown = []
    with FirstTokenWait() as wait:
        for piece in pieces:
            wait.done()
            shown.append(piece)
            print(piece, end="", flush=True)
    return "".join(shown)


def _chat(llm, args):
    print("kdsl-llm chat: type a message, an empty line or Ctrl-D to quit.", file=sys.stderr)
    messages = []
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        reply = _print_pieces(llm.chat(messages, stream=True, truncate=True, **_sampling(args)))
        print()
        messages.append({"role": "assistant", "content": reply})
        if args.timings:
            print(llm.timings.summary(), file=sys.stderr)
    return 0


def _bench(llm, args):
    best = None
    for _ in range(args.repeat):
        timings = bench_ids(llm.generator, args.prompt_tokens, args.gen_tokens,
                            vocab=llm.config.vocab)
        if best is None or timings.prefill_s + timings.decode_s < best.prefill_s + best.decode_s:
            best = timings
    print(f"model {llm.source.path} quant {args.quant} device {llm.model.device.name}")
    print(f"pp{args.prompt_tokens}: {best.prefill_tok_s:.1f} tok/s   "
          f"tg{args.gen_tokens}: {best.decode_tok_s:.1f} tok/s")
    return 0
