"""XLA's compiled programs kept on disk between runs (JAX, TensorFlow): a
second run reads them back and computes the same numbers; where the cache
goes and how it is turned off; which commands turn it on."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import pytest

from bertdesk.training import compile_cache
from bertdesk.training.compile_cache import default_compile_cache_dir

ROOT = Path(__file__).resolve().parent.parent

# One training step of a tiny classifier in a fresh process, with the cache
# that `enable_compile_cache` picks from the environment; prints the loss,
# the cache hits JAX counted and the folder in use.
STEP = r"""
import json, sys, warnings
import keras, numpy as np
hits = []
if keras.backend.backend() == "jax":
    import jax
    jax.monitoring.register_event_listener(
        lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
from bertdesk.layers import BertEncoderBlock
from bertdesk.training.compile_cache import enable_compile_cache
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    used = enable_compile_cache(min_compile_seconds=0)
keras.utils.set_random_seed(7)
inputs = keras.Input((16, 32))
outputs = keras.layers.Dense(2)(BertEncoderBlock(num_heads=2, intermediate_dim=64)(inputs)[:, 0])
model = keras.Model(inputs, outputs)
model.compile(optimizer="adamw", jit_compile=True,
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x, y = rng.normal(size=(8, 16, 32)).astype("float32"), rng.integers(0, 2, 8)
loss = [float(model.train_on_batch(x, y)) for _ in range(2)]
print(json.dumps({"loss": loss, "hits": len(hits), "dir": used and str(used),
                  "warnings": [str(w.message) for w in caught]}))
"""


XLA = keras.backend.backend() in ("jax", "tensorflow")


def run_step(cache):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "TF_XLA_FLAGS"))}
    env.update(BERTDESK_COMPILE_CACHE=str(cache),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def programs(cache):
    return {(p.name, p.stat().st_mtime_ns) for p in cache.iterdir()
            if p.name.endswith(("-cache", ".pb"))}  # JAX's files, TensorFlow's


@pytest.mark.skipif(not XLA, reason="PyTorch compiles nothing")
def test_second_run_reads_the_programs_back_and_computes_the_same(tmp_path):
    cache = tmp_path / "xla"
    first = run_step(cache)
    assert first["dir"] == str(cache) and first["hits"] == 0 and not first["warnings"]
    written = programs(cache)
    assert written  # the train step (and on JAX smaller programs)
    second = run_step(cache)
    if keras.backend.backend() == "jax":
        assert second["hits"] >= 1  # at least the train step came from disk
    assert second["loss"] == first["loss"]  # bit for bit: the same program
    assert programs(cache) == written  # found under the same keys, none written again


@pytest.mark.skipif(not XLA, reason="PyTorch compiles nothing")
def test_off_and_an_unusable_folder_run_without_a_cache(tmp_path):
    off = run_step("off")
    assert off["dir"] is None and off["hits"] == 0 and not off["warnings"]
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad = run_step(blocker / "xla")
    assert bad["dir"] is None and bad["hits"] == 0
    assert len(bad["warnings"]) == 1 and str(blocker / "xla") in bad["warnings"][0]
    assert bad["loss"] == off["loss"]


@pytest.mark.backend_neutral
def test_where_the_cache_goes(monkeypatch, tmp_path):
    monkeypatch.delenv("BERTDESK_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_compile_cache_dir() == tmp_path / "bertdesk" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_compile_cache_dir() == Path.home() / ".cache" / "bertdesk" / "xla"
    monkeypatch.setenv("BERTDESK_COMPILE_CACHE", str(tmp_path / "mine"))
    assert default_compile_cache_dir() == tmp_path / "mine"
    for off in ("off", "OFF", "0", "", "false", " none "):
        monkeypatch.setenv("BERTDESK_COMPILE_CACHE", off)
        assert default_compile_cache_dir() is None


@pytest.mark.backend_neutral
def test_commands_that_compile_turn_the_cache_on(monkeypatch, tmp_path, capsys):
    from bertdesk.cli import main as cli_main

    calls = []
    monkeypatch.setattr(compile_cache, "enable_compile_cache", lambda: calls.append(1))
    missing = str(tmp_path / "no_model")
    assert cli_main(["info", missing]) == 2  # reads a folder, compiles nothing
    assert calls == []
    assert cli_main(["predict", "--model", missing, "--data", missing,
                     "--output", str(tmp_path / "p.csv")]) == 2
    assert calls == [1]
    assert "no_model" in capsys.readouterr().err
