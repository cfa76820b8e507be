"""Import Keras without the optional integrations a bertdesk job never uses.

When they are installed, `import keras` also imports JAX (for its Orbax
checkpoint callback, whatever the backend) and scikit-learn (for its
estimator wrappers): about 175 MB resident and a second of start-up in
every PyTorch or TensorFlow job on this machine, for nothing. The command
line (and so the desktop app's training processes) imports Keras through
`import_keras_lean`, with those two withheld while Keras loads; afterwards
they import normally, only Keras' own hooks into them stay off. The
desktop app's own process does the same when it first loads a model (to
inspect predictions, or export one); its window comes up without Keras.
"""

import importlib
import os
import sys
import threading


def withheld_modules(backend):
    """Top-level packages Keras would import for nothing on `backend`."""
    return ("sklearn",) if backend == "jax" else ("jax", "sklearn")


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
            try:
                importlib.import_module("keras")
            finally:
                for name in names:
                    if sys.modules.get(name, 0) is None:
                        del sys.modules[name]
    # through the import system: a module another thread is still
    # importing (a plain `import keras`) is waited for, not handed out half made
    return importlib.import_module("keras")


_IMPORTING = threading.Lock()
