"""The per-device tuning database: lookups, nearest keys, damage and concurrent writers."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
from hypothesis import given, strategies as st

import kdsl
from kdsl import tuning_db
from kdsl_kernels import configs


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private KDSL_CACHE_DIR, and no database objects left from other tests."""
    monkeypatch.setenv("KDSL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning_db, "_databases", {})
    monkeypatch.setattr(tuning_db, "_warned", set())
    return tmp_path


def test_record_and_exact_lookup(cache):
    db = tuning_db.database()
    db.record("matmul", {"M": 16, "N": 4096, "K": 4096}, {"BM": 4, "BN": 64}, 0.01)
    assert db.lookup("matmul", {"K": 4096, "N": 4096, "M": 16})["config"] == {"BM": 4, "BN": 64}
    assert db.lookup("matmul", {"M": 17, "N": 4096, "K": 4096}) is None
    assert db.path == cache / "tuning" / f"{kdsl.current_device().fingerprint_hash}.json"
    data = json.loads(db.path.read_text())
    assert data["version"] == tuning_db.DB_VERSION
    assert data["fingerprint"] == kdsl.current_device().fingerprint


def test_best_config_memo_tells_keys_apart_as_lookup_does(cache):
    """The per-launch memo of best_config answers as lookup would: True and 1,
    -0.0 and 0.0 are different keys, and a nan key does not grow the memo."""
    db = tuning_db.database()
    db.record("k", {"x": 1}, {"B": 1}, 0.01)
    db.record("k", {"x": True}, {"B": 2}, 0.01)
    db.record("k", {"eps": 0.0}, {"B": 3}, 0.01)
    db.record("k", {"eps": -0.0}, {"B": 4}, 0.01)
    for _ in range(2):
        assert db.best_config("k", {"x": 1}) == {"B": 1}
        assert db.best_config("k", {"x": True}) == {"B": 2}
        assert db.best_config("k", {"eps": 0.0}) == {"B": 3}
        assert db.best_config("k", {"eps": -0.0}) == {"B": 4}
    for _ in range(5):
        db.best_config("k", {"eps": float("nan")})
    assert len(db._memo) == 5


def test_nearest_key_by_log_distance(cache):
    db = tuning_db.database()
    db.record("matmul", {"M": 16, "N": 4096, "K": 4096, "trans_b": True}, {"BM": 1}, 0.01)
    db.record("matmul", {"M": 512, "N": 4096, "K": 4096, "trans_b": True}, {"BM": 2}, 0.01)
    db.record("matmul", {"M": 64, "N": 4096, "K": 4096, "trans_b": False}, {"BM": 3}, 0.01)
    # 100 is nearer 512 than 16 on a log scale (and the trans_b=False entry never matches)
    assert db.best_config("matmul", {"M": 100, "N": 4096, "K": 4096, "trans_b": True}) == {"BM": 2}
    assert db.best_config("matmul", {"M": 300, "N": 4096, "K": 4096, "trans_b": True}) == {"BM": 2}
    assert db.best_config("matmul", {"M": 20, "N": 4096, "K": 4096, "trans_b": True}) == {"BM": 1}
    assert db.best_config("matmul", {"M": 20, "N": 4096, "K": 4096, "trans_b": False}) == {"BM": 3}
    assert db.best_config("softmax", {"M": 20}) is None
    assert db.best_config("matmul", {"M": 20}) is None          # other key names never match


@given(st.dictionaries(st.sampled_from("MNK"), st.integers(0, 1 << 20), min_size=1),
       st.dictionaries(st.sampled_from("MNK"), st.integers(0, 1 << 20), min_size=1))
def test_key_distance_is_a_metric_on_equal_names(a, b):
    d = tuning_db.key_distance(a, b)
    assert d == tuning_db.key_distance(b, a)
    assert tuning_db.key_distance(a, a) == 0
    if set(a) != set(b):
        assert d == float("inf")
    else:
        assert (d == 0) == (a == b)


def test_tuned_uses_exact_then_nearest_then_default(cache):
    default = {"BN": 4, "BK": 256, "num_threads": 16}
    key = {"N": 4096, "K": 4096, "trans_b": True}
    assert configs.tuned("gemv", key, default) == default
    tuning_db.database().record("gemv", key, {"BN": 2, "BK": 512, "num_threads": 32}, 0.001)
    assert configs.tuned("gemv", key, default) == {"BN": 2, "BK": 512, "num_threads": 32}
    assert configs.tuned("gemv", dict(key, N=11008), default)["BK"] == 512
    # a config with other parameter names (an older kernel's) is not used
    assert configs.tuned("gemv", key, {"BN": 4, "num_threads": 16}) == {"BN": 4, "num_threads": 16}
    returned = configs.tuned("gemv", key, default)
    returned["BN"] = 999
    assert configs.tuned("gemv", key, default)["BN"] == 2
    # ...but one that differs only in optional names (the GEMV's runs of rows) is
    assert configs.gemv_config(4096, 4096) == {"BN": 2, "BK": 512, "num_threads": 32}
    runs = {"BN": 1, "BK": 64, "num_threads": 1, "per_cu": 2}
    tuning_db.database().record("gemv", dict(key, N=512), runs, 0.0001)
    assert configs.tuned("gemv", dict(key, N=512), default, optional=("per_cu",)) == runs
    assert configs.tuned("gemv", dict(key, N=512), default) == default


def _damaged(cache, text):
    db = tuning_db.database()
    db.record("gemv", {"N": 8}, {"BN": 2}, 0.001)
    db.path.write_text(text)
    tuning_db._databases.clear()
    with pytest.warns(UserWarning) as record:
        config = configs.tuned("gemv", {"N": 8}, {"BN": 4})
        again = configs.tuned("gemv", {"N": 8}, {"BN": 4})
    assert config == again == {"BN": 4}
    assert len(record) == 1, "a damaged database warns once"
    return str(record[0].message)


def test_truncated_file_warns_once_and_gives_defaults(cache):
    db = tuning_db.database()
    db.record("gemv", {"N": 8}, {"BN": 2}, 0.001)
    good = db.path.read_text()
    message = _damaged(cache, good[:len(good) // 2])
    assert "truncated" in message and "kdsl-autotune" in message


def test_other_version_warns_and_gives_defaults(cache):
    data = {"version": 999, "fingerprint": kdsl.current_device().fingerprint, "entries": {}}
    assert "version 999" in _damaged(cache, json.dumps(data))


def test_foreign_device_file_warns_and_gives_defaults(cache):
    data = {"version": tuning_db.DB_VERSION, "fingerprint": "NVIDIA CUDA | H100 | 1 | 132",
            "entries": {"gemv": {tuning_db.key_text({"N": 8}): {"key": {"N": 8},
                                                               "config": {"BN": 2}}}}}
    assert "another device" in _damaged(cache, json.dumps(data))


def test_writing_over_a_damaged_file_moves_it_aside(cache):
    db = tuning_db.database()
    db.path.parent.mkdir(parents=True)
    db.path.write_text("{not json")
    with pytest.warns(UserWarning, match="moved it"):
        db.record("gemv", {"N": 8}, {"BN": 2}, 0.001)
    assert db.path.with_name(db.path.name + ".unusable").read_text() == "{not json"
    assert db.lookup("gemv", {"N": 8})["config"] == {"BN": 2}


def test_concurrent_writers_keep_every_entry(cache):
    """Two processes record 40 entries each at once; all 80 survive, the file stays valid."""
    script = textwrap.dedent("""
        import sys
        from kdsl import tuning_db
        db = tuning_db.database()
        for i in range(40):
            db.record("k" + sys.argv[1], {"i": i}, {"X": i}, 0.001)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    writers = [subprocess.Popen([sys.executable, "-c", script, str(n)], env=env)
               for n in (1, 2)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    db = tuning_db.database()
    db.reload()
    for n in (1, 2):
        assert [db.lookup(f"k{n}", {"i": i})["config"]["X"] for i in range(40)] == list(range(40))


def test_export_import_roundtrip_and_foreign_import_refused(cache, tmp_path):
    db = tuning_db.database()
    db.record("gemv", {"N": 8}, {"BN": 2}, 0.001)
    exported = tmp_path / "shipped.json"
    assert db.export(exported) == 1
    db.path.unlink()
    db.reload()
    assert db.lookup("gemv", {"N": 8}) is None
    assert db.import_file(exported) == 1
    assert db.lookup("gemv", {"N": 8})["config"] == {"BN": 2}
    data = json.loads(exported.read_text())
    data["device"]["name"] = "Adreno 740"
    exported.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="Adreno 740"):
        db.import_file(exported)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert db.import_file(exported, force=True) == 1
    exported.write_text("garbage")
    with pytest.raises(ValueError, match="not a readable tuning database"):
        db.import_file(exported)
