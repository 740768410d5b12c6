"""The tuner times the shapes the engine launches (autotune/shapes.py against engine/).

Every config lookup the engine makes for a tunable kernel (kdsl_kernels.configs.tuned)
while it loads, prefills and decodes a tiny GGUF must be a task `kdsl-autotune`
would tune for that model: the fused Q/K/V and gate/up weights, FP4 in the
engine's group size, the engine's prefill chunk.
"""
import numpy as np
import pytest

from autotune import shapes, spaces
from engine import LLM
from engine.llm import DEFAULT_CHUNK
from engine.weights import FP4_GROUP_SIZE
from kdsl_kernels import configs
from test_engine_loading import write_tiny_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes") / "tiny.gguf"
    write_tiny_gguf(path, np.random.default_rng(11))
    return path


def test_engine_constants_match_the_tuners():
    assert shapes.ENGINE_FP4_GROUP_SIZE == FP4_GROUP_SIZE
    assert shapes.ENGINE_PREFILL_CHUNK == DEFAULT_CHUNK


@pytest.mark.parametrize("quant", ["m0e4", "fp16", "fp32"])
def test_every_tunable_lookup_of_the_engine_is_a_tuning_task(tiny_gguf, quant, monkeypatch):
    looked_up = []
    real = configs.tuned

    def recording(kernel, key, default, device=None, optional=()):
        looked_up.append((kernel, dict(key)))
        return real(kernel, key, default, device, optional)

    monkeypatch.setattr(configs, "tuned", recording)
    chunk = 8
    llm = LLM.load(tiny_gguf, quant=quant, chunk=chunk, context=48, use_cache=False,
                   progress=False)
    llm.generate("a prompt longer than one chunk of eight tokens", max_new_tokens=3)
    tunable = [(k, key) for k, key in looked_up if k in spaces.KERNELS]
    assert tunable, "the engine looked up no tunable config"
    tasks = shapes.tasks(shapes.model_dims(tiny_gguf), prefill=[chunk])
    planned = {(t.kernel, tuple(sorted(t.key.items()))) for t in tasks}
    missing = {(k, tuple(sorted(key.items()))) for k, key in tunable} - planned
    assert not missing, f"the engine runs shapes the tuner never times: {sorted(missing)}"
