"""Import Keras without the optional integrations a bertdesk job never uses.

When they are installed, `import keras` also imports JAX (for its Orbax
checkpoint callback, whatever the backend) and scikit-learn (for its
estimator wrappers): about 175 MB resident and a second of start-up in
every PyTorch or TensorFlow job on this machine, for nothing. The command
line (and so the desktop app's training processes) imports Keras through
`import_keras_lean`, with those two withheld while Keras loads; afterwards
they import normally, only Keras' own hooks into them stay off.
"""

import importlib
import os
import sys


def withheld_modules(backend):
    """Top-level packages Keras would import for nothing on `backend`."""
    return ("sklearn",) if backend == "jax" else ("jax", "sklearn")


def import_keras_lean():
    """Import and return Keras on `$KERAS_BACKEND` (Keras' default when
    unset), skipping its JAX and scikit-learn integrations; a no-op when
    Keras is already imported, and nothing is withheld that is already."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    names = [n for n in withheld_modules(backend) if n not in sys.modules]
    # A None entry makes `import name` raise ModuleNotFoundError and
    # importlib.util.find_spec(name) answer None, as if not installed.
    for name in names:
        sys.modules[name] = None
    try:
        return importlib.import_module("keras")
    finally:
        for name in names:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
