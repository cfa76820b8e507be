"""Import Keras without the optional integrations a bertdesk job never uses.

When they are installed, `import keras` also imports JAX (for its Orbax
checkpoint callback, whatever the backend), scikit-learn (for its estimator
wrappers) and pandas (so that `fit` takes DataFrames; bertdesk hands Keras
NumPy arrays and its own batches): about 175 MB resident and a second of
start-up in every PyTorch or TensorFlow job on this machine for the first
two, 64-66 MB more for pandas (with PyArrow), for nothing. On PyTorch it
also imports `torch._dynamo` (71 MB, 1.5 s) for two `torch._dynamo.disable`
decorators, which matter only to code `torch.compile` traces: they get a
stand-in that imports the real one at the first call made once it is loaded
(`torch.compile` loads it before it traces anything).

The command line (and so the desktop app's training processes) imports
Keras through `import_keras_lean`, with those withheld while Keras loads;
afterwards they import normally (bertdesk reads tables with pandas), only
Keras' own hooks into them stay off. The desktop app's own process does the
same when it first loads a model (to inspect predictions, or export one);
its window comes up without Keras.
"""

import functools
import importlib
import os
import sys
import threading
import types


def withheld_modules(backend):
    """Top-level packages Keras would import for nothing on `backend`."""
    return ("sklearn", "pandas") if backend == "jax" else ("jax", "sklearn", "pandas")


def import_keras_lean():
    """Import and return Keras on `$KERAS_BACKEND` (Keras' default when
    unset), skipping its JAX and scikit-learn integrations; a no-op when
    Keras is already imported, and nothing is withheld that is already.

    Safe from several threads (the desktop app loads models in a pool):
    the first imports, the others wait for the whole module. While Keras
    loads, the withheld packages cannot be imported by any thread."""
    with _IMPORTING:
        if "keras" not in sys.modules:
            backend = os.environ.get("KERAS_BACKEND", "tensorflow")
            names = [n for n in withheld_modules(backend) if n not in sys.modules]
            # A None entry makes `import name` raise ModuleNotFoundError and
            # importlib.util.find_spec(name) answer None, as if not installed.
            for name in names:
                sys.modules[name] = None
            stand_in = None
            if backend == "torch" and "torch._dynamo" not in sys.modules:
                stand_in = sys.modules["torch._dynamo"] = _dynamo_stand_in()
            try:
                importlib.import_module("keras")
            finally:
                for name in names:
                    if sys.modules.get(name, 0) is None:
                        del sys.modules[name]
                if stand_in is not None and sys.modules.get("torch._dynamo") is stand_in:
                    del sys.modules["torch._dynamo"]
    # through the import system: a module another thread is still
    # importing (a plain `import keras`) is waited for, not handed out half made
    return importlib.import_module("keras")


_IMPORTING = threading.Lock()


def _dynamo_stand_in():
    """What Keras' PyTorch backend takes from `torch._dynamo` at import:
    `disable`, as a decorator."""
    module = types.ModuleType("torch._dynamo", "bertdesk's stand-in while Keras imports")
    module.disable = lazy_dynamo_disable
    return module


def lazy_dynamo_disable(fn=None, recursive=True, **kwargs):
    """`torch._dynamo.disable` without importing `torch._dynamo`: `fn` runs
    as it is while `torch._dynamo` is not loaded (nothing can be compiling
    then), and through the real `torch._dynamo.disable(fn, ...)`, made at
    the first call after, once it is (under `torch.compile`, a call from
    traced code is then left to run eagerly, as Keras meant)."""
    if fn is None:
        return functools.partial(lazy_dynamo_disable, recursive=recursive, **kwargs)

    @functools.wraps(fn)
    def call(*args, **kw):
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kw)
        disabled = call.__dict__.get("disabled")
        if disabled is None:
            import torch._dynamo

            disabled = call.disabled = torch._dynamo.disable(fn, recursive, **kwargs)
        return disabled(*args, **kw)

    return call
