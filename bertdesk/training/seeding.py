"""Seeding without importing TensorFlow.

`keras.utils.set_random_seed` imports TensorFlow to seed `tf.data`, even on
the JAX and PyTorch backends (about 1 GB resident for nothing: bertdesk
feeds numpy batches). This does the same on those backends, reaching one
private Keras module (`global_state`) to reset Keras' global seed generator.
"""

import random

import numpy as np


def set_seed(seed):
    import keras

    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def random_state(model):
    """Dropout generator state, which Keras does not save with a model: the
    layers' seed-generator variables (JAX, TensorFlow) and, on PyTorch,
    torch's global generator (Keras' unseeded dropout draws from it), as
    JSON-able lists for a checkpoint's state.json."""
    import keras

    seeds = [keras.ops.convert_to_numpy(v).tolist() for v in model.non_trainable_variables
             if "seed_generator_state" in v.path]
    state = {"seed_generators": seeds}
    if keras.backend.backend() == "torch":
        import torch

        state["torch"] = torch.get_rng_state().tolist()
    return state


def set_random_state(model, state, torch_generator=True):
    """Restore `random_state(model)`. Keras' PyTorch `fit` draws from torch's
    generator while it sets up, so a resumed run restores that part again
    right before its first batch (`torch_generator`)."""
    import keras

    variables = [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]
    if len(variables) != len(state["seed_generators"]):
        from bertdesk.data.tables import DataError

        raise DataError("checkpoint/state.json does not match the model (dropout generators)")
    for v, value in zip(variables, state["seed_generators"]):
        v.assign(keras.ops.convert_to_tensor(value, dtype=v.dtype))
    if torch_generator and "torch" in state:
        import torch

        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def keep_tensorflow_unloaded():
    """On the JAX and PyTorch backends, stop Keras from importing TensorFlow
    just to check `isinstance(x, tf.TensorShape)` while serialising configs.

    Keras probes `module_utils.tensorflow.available`, which imports
    TensorFlow (about 1 GB resident, several seconds) when it is installed.
    bertdesk's fine-tuning feeds numpy batches and never needs tf.data, so
    for its runs the probe answers False unless TensorFlow is already loaded.
    Importing TensorFlow directly (e.g. for a Google checkpoint) still works.
    """
    import sys

    import keras

    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        return
    from keras.src.utils import module_utils

    if module_utils.tensorflow._available is None:
        module_utils.tensorflow._available = False
