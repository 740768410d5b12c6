"""The engine's API and command line: generate, stream, chat, stops, context limits, timings.

Most tests use a tiny GGUF written by test_engine_loading's helper (random
weights, a byte-level tokenizer, a ChatML template); the slow one runs the
embedded SmolLM2 through `python -m engine run`.
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from engine import LLM
from engine.cli import main
from engine.sampling import SamplingParams
from test_engine_loading import smollm2_path, write_tiny_gguf

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "tiny.gguf"
    write_tiny_gguf(path, np.random.default_rng(5), chat_template=CHATML)
    return path


@pytest.fixture(scope="module")
def llm(tiny_path):
    return LLM.load(tiny_path, quant="fp32", chunk=8, context=48, use_cache=False,
                    progress=False)


def test_generate_equals_joined_stream(llm):
    text = llm.generate("hello there", max_new_tokens=10)
    assert isinstance(text, str)
    pieces = list(llm.stream("hello there", max_new_tokens=10))
    assert "".join(pieces) == text
    t = llm.timings
    assert t.prompt_tokens == len(llm.tokenizer.encode("hello there"))
    assert 1 <= t.new_tokens <= 10 and t.finish_reason in ("stop", "length")
    assert t.prefill_tok_s > 0 and t.ttft_s > 0


def test_seeded_sampling_is_reproducible(llm):
    options = dict(max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9, seed=11)
    assert llm.generate("abc", **options) == llm.generate("abc", **options)
    assert llm.generate("abc", max_new_tokens=0) == ""


def test_stop_ids_end_generation(llm):
    ids = llm.tokenizer.encode("xyz")
    llm.generator.cached_ids = []
    got = list(llm.generator.stream_ids(ids, max_new_tokens=5, params=SamplingParams(),
                                        stop_ids=set(range(llm.config.vocab))))
    assert got == [] and llm.timings.finish_reason == "stop"


def _greedy_ids(llm, ids, pipeline, **options):
    llm.generator.pipeline = pipeline
    try:
        out = list(llm.generator.stream_ids(ids, params=SamplingParams(), **options))
        return out, llm.generator.timings.finish_reason, list(llm.generator.cached_ids)
    finally:
        llm.generator.pipeline = True


def test_pipelined_greedy_decoding_equals_host_sampling(llm):
    """Greedy decoding with the token picked on the device and each step queued
    before the host reads the last token gives the host path's ids, where it
    runs to the length limit and where a stop id ends it early (the step queued
    past the stop is not counted in the cache: a following turn that reuses it
    gives the fresh run's ids)."""
    ids = llm.tokenizer.encode("the cat sat on")
    llm.generator.cached_ids = []
    want, reason, _ = _greedy_ids(llm, ids, False, max_new_tokens=12, stop_ids=())
    llm.generator.cached_ids = []
    got, got_reason, _ = _greedy_ids(llm, ids, True, max_new_tokens=12, stop_ids=())
    assert got == want and got_reason == reason == "length"
    stop = want[5]                                   # a stop id reached mid-way
    first = want[:want.index(stop)]
    for pipeline in (False, True):
        llm.generator.cached_ids = []
        got, reason, cached = _greedy_ids(llm, ids, pipeline, max_new_tokens=12,
                                          stop_ids={stop})
        assert got == first and reason == "stop"
        assert cached == ids + first and llm.model.cache.length == len(cached)
        # the next turn starts with the cached ids and runs only its new tokens
        turn = ids + first + [stop] + ids
        again, _, _ = _greedy_ids(llm, turn, pipeline, max_new_tokens=6, stop_ids=())
        llm.generator.cached_ids = []
        fresh, _, _ = _greedy_ids(llm, turn, False, max_new_tokens=6, stop_ids=())
        assert again == fresh
    # a caller that stops iterating early leaves the cache holding what it counts
    llm.generator.cached_ids = []
    stream = llm.generator.stream_ids(ids, max_new_tokens=12, params=SamplingParams(),
                                      stop_ids=())
    taken = [next(stream) for _ in range(4)]
    stream.close()
    assert taken == want[:4]
    assert llm.model.cache.length == len(llm.generator.cached_ids) == len(ids) + 3


def test_prompt_past_context_is_a_clear_error_or_truncated(llm):
    long_prompt = "ab " * 40                       # more tokens than the context of 48
    with pytest.raises(ValueError, match="context holds 48.*truncate=True"):
        llm.generate(long_prompt, max_new_tokens=4)
    text = llm.generate(long_prompt, max_new_tokens=4, truncate=True)
    assert llm.timings.prompt_tokens <= 48 - 4 and isinstance(text, str)
    with pytest.raises(ValueError, match="empty"):
        llm.generate("", max_new_tokens=4)


def test_generation_stops_when_the_context_is_full(llm):
    ids = llm.tokenizer.encode("q " * 20)
    llm.generator.cached_ids = []
    got = list(llm.generator.stream_ids(ids, max_new_tokens=1000, params=SamplingParams(),
                                        stop_ids=()))
    assert len(ids) + len(got) == 48 and llm.timings.finish_reason == "length"


def test_prefill_hands_back_control_after_each_chunk(llm):
    calls = []
    llm.generator.cached_ids = []
    llm.generate("a b c d e f g h i j k", max_new_tokens=2,
                 on_prefill=lambda done, total: calls.append((done, total)))
    n = llm.timings.prompt_tokens
    assert calls == [(min(8 * (i + 1), n), n) for i in range(-(-n // 8))]


def test_cached_prefix_is_reused_and_gives_the_same_text(llm):
    llm.generator.cached_ids = []
    fresh = llm.generate("one two three four", max_new_tokens=6)
    again = llm.generate("one two three four", max_new_tokens=6)
    assert again == fresh and llm.timings.cached_tokens == llm.timings.prompt_tokens - 1


def test_chat_renders_the_template(llm):
    messages = [{"role": "user", "content": "hi"}]
    rendered = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert llm.tokenizer.apply_chat_template(messages) == rendered
    reply = llm.chat(messages, max_new_tokens=6)
    llm.generator.cached_ids = []
    assert reply == "".join(llm._stream_ids(llm.tokenizer.encode(rendered, special=False),
                                            max_new_tokens=6))
    assert "".join(llm.chat(messages, stream=True, max_new_tokens=6)) == reply


def test_low_priority_load(tiny_path):
    """The hint is applied where the device has it, else a warning says it was not."""
    import kdsl
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        low = LLM.load(tiny_path, quant="fp32", chunk=8, context=32, priority="low",
                       use_cache=False, progress=False)
    try:
        warned = any("priority" in str(w.message) for w in caught)
        assert low.priority_applied != warned
        assert isinstance(low.generate("abc", max_new_tokens=3), str)
    finally:
        kdsl.current_device().set_queue_priority(None)
    with pytest.raises(ValueError, match="priority"):
        LLM.load(tiny_path, priority="urgent")


def test_bad_load_arguments(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="unknown quant"):
        LLM.load(tiny_path, quant="int2")
    with pytest.raises(ValueError, match="chunk"):
        LLM.load(tiny_path, chunk=0)
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        LLM.load(tmp_path / "nothing.gguf")


def test_cli_run_and_errors(tiny_path, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_path), "--quant", "fp32", "--raw",
                 "--max-new-tokens", "4", "--timings", "hello"]) == 0
    out = capsys.readouterr()
    assert "tok/s" in out.err
    assert main(["run", "--model", str(tiny_path), "--quant", "fp32",
                 "--max-new-tokens", "3", "hi"]) == 0
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    assert main(["run", "--model", str(bad), "hello"]) == 2
    assert "bad.gguf" in capsys.readouterr().err
    assert main(["bench", "--model", str(tiny_path), "--quant", "fp32", "--prompt-tokens", "20",
                 "--gen-tokens", "4", "--repeat", "1"]) == 0
    assert "pp20" in capsys.readouterr().out


@pytest.mark.slow
def test_default_model_answers_the_capital_of_france():
    smollm2_path()
    out = subprocess.run([sys.executable, "-m", "engine", "run",
                          "What is the capital of France?", "--max-new-tokens", "40"],
                         capture_output=True, text=True, timeout=1200,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_generation_queue_has_no_profiling_and_the_autotuner_still_times(tiny_path):
    """The engine's queue enqueues faster without profiling; timing a call
    (kdsl.autotune's measurement) switches profiling on for itself and back off."""
    import kdsl
    import kdsl_kernels as kk
    from kdsl.autotuner import time_call
    llm = LLM.load(tiny_path, quant="fp32", chunk=8, context=48, use_cache=False,
                   progress=False)
    device = llm.model.device
    assert not device.queue_profiling
    x = kdsl.tensor(np.ones((4, 64), np.float32))
    assert time_call(lambda: kk.rms_norm(x, kdsl.tensor(np.ones(64, np.float32)), 1e-5),
                     warmup=1, rep=2, device=device) > 0
    assert not device.queue_profiling
