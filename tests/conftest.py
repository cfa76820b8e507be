"""Shared fixtures. Each test process runs one Keras backend (KERAS_BACKEND);
`tests/run_all_backends.py` runs the suite once per backend."""

import atexit
import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# JAX's compiled programs shared by this run's tests (and the command lines
# they start): tiny models of the same shapes compile once, not per test
# (126 -> 109 s for the JAX fine-tuning tests). A fresh folder per run, so
# nothing from an earlier run or the user's cache is read.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _xla_cache = tempfile.mkdtemp(prefix="bertdesk-test-xla-")
    atexit.register(shutil.rmtree, _xla_cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# and the command lines the tests run never write to the user's cache
# (TensorFlow's cache gains nothing within one run: 172 against 176 s)
os.environ.setdefault("BERTDESK_COMPILE_CACHE", "off")
sys.path.insert(0, str(Path(__file__).parent))
# Keras as the command line imports it (bertdesk/lean_import.py), before any
# test module does: the tests run what the jobs run.
from bertdesk.lean_import import import_keras_lean  # noqa: E402

import_keras_lean()

# Tests that touch no backend run in this backend's process only.
NEUTRAL_BACKEND = "jax"

TINY = dict(vocabulary_size=120, num_layers=2, hidden_dim=16, num_heads=2,
            intermediate_dim=32, max_sequence_length=32)


def pytest_collection_modifyitems(config, items):
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == NEUTRAL_BACKEND:
        return
    skip = pytest.mark.skip(reason=f"backend-neutral; runs in the {NEUTRAL_BACKEND} process")
    for item in items:
        if "backend_neutral" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _earlier_modules_heap_frozen():
    """What is alive when a test module starts, after one full collection,
    is left out of every later collection (`gc.freeze`). Keras runs a full
    `gc.collect()` whenever a layer drops a variable (`Layer.__delattr__`:
    every `Dense` that quantizes), and Python's own full collections walk
    the whole heap too; a test process that has built hundreds of models
    holds millions of objects (3.1 million two thirds into the JAX run),
    so each took 2-3 s, and one quantization test spent 28 of its 29 s
    there. Each module's collection walks the previous module's objects."""
    gc.collect()
    gc.freeze()
    yield


@pytest.fixture(autouse=True)
def _seed_and_policy():
    import keras

    keras.utils.set_random_seed(1234)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def minilm_folder():
    import bertdesk

    return Path(bertdesk.bundled_checkpoint())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, minilm_folder):
    """A checkpoint folder: 2-layer, width-16 BERT with the real uncased
    vocabulary, for fine-tuning tests (trains in seconds)."""
    import bertdesk

    folder = tmp_path_factory.mktemp("tiny_bert")
    backbone = bertdesk.BertBackbone(vocabulary_size=30522, num_layers=2, hidden_dim=16,
                                     num_heads=2, intermediate_dim=32, max_sequence_length=64)
    bertdesk.save_pretrained(backbone, folder, bertdesk.load_tokenizer(minilm_folder),
                             overwrite=True)
    return str(folder)


@pytest.fixture
def tiny_config():
    return dict(TINY)


def random_batch(batch=3, seq=10, vocab=120, lengths=None, seed=0):
    """A token batch whose rows have `lengths` real tokens (then padding)."""
    rng = np.random.default_rng(seed)
    lengths = lengths or [seq - i * 3 for i in range(batch)]
    token_ids = rng.integers(5, vocab, size=(batch, seq)).astype("int32")
    padding_mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype("int32")
    token_ids[padding_mask == 0] = 0
    segment_ids = np.zeros_like(token_ids)
    segment_ids[:, seq // 2:] = 1
    segment_ids[padding_mask == 0] = 0
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
# torch.compile (Keras' jit_compile on the torch backend) takes 1-2 minutes per
# model on 2 CPU cores; the suite compiles one real model with it
# (test_parity.py) and leaves the rest of jit_compile to TensorFlow and JAX.
skip_torch_compile = pytest.mark.skipif(
    BACKEND == "torch", reason="torch.compile covered once by test_parity (1-2 min per model)")
