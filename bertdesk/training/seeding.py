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
