"""On TensorFlow, the optimizer's variables are made before the first trace
of the training step (`BuildsOptimizerFirst`): one trace instead of two,
the same variables and the same training."""

from unittest import mock

import keras
import numpy as np
import pytest
from conftest import BACKEND
from test_releases_gradients import MODELS

from bertdesk.models import BuildsOptimizerFirst
from bertdesk.training.optimization import bert_adamw

TENSORFLOW = BACKEND == "tensorflow"
OPTIMIZERS = {  # name: (optimizer, dtype policy)
    "accumulating": (lambda: keras.optimizers.AdamW(1e-2, gradient_accumulation_steps=2),
                     "float32"),
    "bertdesk_adamw": (lambda: bert_adamw(1e-2, 10), "float32"),
    "loss_scale": (lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.AdamW(1e-2)),
                   "mixed_bfloat16"),
}


def _train(kind, optimizer, policy, keras_build):
    """Three steps of a fresh model: (weights, the optimizer's variables,
    how often the step's Python ran at the first step, whether the
    optimizer was built before the step's first trace)."""
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model, x, y = MODELS[kind]()
    model.compile(optimizer=optimizer(), loss=model.loss)
    assert isinstance(model, BuildsOptimizerFirst)
    runs, built_at_trace, step = [], [], type(model).train_step

    def counting_step(self, *args, **kwargs):
        runs.append(1)
        built_at_trace.append(self.optimizer.built)
        return step(self, *args, **kwargs)

    keras_own = keras.Model.make_train_function
    with mock.patch.object(type(model), "train_step", counting_step), mock.patch.object(
            BuildsOptimizerFirst, "make_train_function",
            keras_own if keras_build else BuildsOptimizerFirst.make_train_function):
        model.train_on_batch(x, y)
        first = len(runs)
        model.train_on_batch(x, y)
        model.train_on_batch(x, y)
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    # each variable's own name, less its optimizers' (numbered per instance)
    slots = [(v.path.rsplit("/", 1)[-1], keras.ops.convert_to_numpy(v))
             for v in model.optimizer.variables]
    return weights, slots, first, built_at_trace[0]


# every model with bertdesk's AdamW; the classifier with the optimizers that
# make more variables (accumulators, a loss scale's state)
CASES = [(kind, "bertdesk_adamw") for kind in sorted(MODELS)] + [
    ("text_classifier", "accumulating"), ("text_classifier", "loss_scale")]


@pytest.mark.parametrize("kind,optimizer", CASES)
def test_the_optimizer_is_built_before_the_first_trace(kind, optimizer):
    make, policy = OPTIMIZERS[optimizer]
    weights, slots, first, built = _train(kind, make, policy, keras_build=False)
    keras_weights, keras_slots, keras_first, keras_built = _train(kind, make, policy,
                                                                  keras_build=True)
    if TENSORFLOW:  # Keras builds it inside the trace, which then runs twice
        # (the pretraining model's two losses still make their trackers there)
        assert (first, built) == (2 if kind == "pretraining" else 1, True)
        assert (keras_first, keras_built) == (2, False)
    else:  # JAX and PyTorch: Keras' own order, unchanged
        assert (first, built) == (keras_first, keras_built)
    assert [name for name, _ in slots] == [name for name, _ in keras_slots]
    for (name, value), (_, keras_value) in zip(slots, keras_slots):
        np.testing.assert_allclose(value, keras_value, rtol=1e-5, atol=1e-6, err_msg=name)
    for ours, theirs in zip(weights, keras_weights, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
