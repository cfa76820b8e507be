"""On TensorFlow, the optimizer's variables, and the compiled losses' and
metrics' where Keras would make them in the step, are made before the first
trace of the training step (`BuildsOptimizerFirst`): one trace instead of
two, the same variables, the same training and the same logs."""

import contextlib
import copy
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


def _train(kind, optimizer, policy, keras_build, metrics=None):
    """Three steps of a fresh model: (weights, the optimizer's variables,
    how often the step's Python ran at the first step, whether the
    optimizer was built before the step's first trace, the last step's
    logs)."""
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model, x, y = MODELS[kind]()
    model.compile(optimizer=optimizer(), loss=model.loss, metrics=metrics)
    assert isinstance(model, BuildsOptimizerFirst)
    runs, built_at_trace, step = [], [], type(model).train_step

    def counting_step(self, *args, **kwargs):
        runs.append(1)
        built_at_trace.append(self.optimizer.built)
        return step(self, *args, **kwargs)

    own = {name: getattr(keras.Model if keras_build else BuildsOptimizerFirst, name)
           for name in ("make_train_function", "_maybe_symbolic_build")
           if hasattr(keras.Model, name)}  # the second on TensorFlow only
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(type(model), "train_step", counting_step))
        for name, method in own.items():
            patches.enter_context(mock.patch.object(BuildsOptimizerFirst, name, method))
        model.train_on_batch(x, y)
        first = len(runs)
        model.train_on_batch(x, y)
        logs = model.train_on_batch(x, y, return_dict=True)
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    # each variable's own name, less its optimizers' (numbered per instance)
    slots = [(v.path.rsplit("/", 1)[-1], keras.ops.convert_to_numpy(v))
             for v in model.optimizer.variables]
    return weights, slots, first, built_at_trace[0], logs


# every model with bertdesk's AdamW; the classifier with the optimizers that
# make more variables (accumulators, a loss scale's state), and with metrics
# Keras makes from a name or a function
CASES = [(kind, "bertdesk_adamw", None) for kind in sorted(MODELS)] + [
    ("text_classifier", "accumulating", None), ("text_classifier", "loss_scale", None),
    ("text_classifier", "bertdesk_adamw", ["accuracy"]),
    ("token_classifier", "bertdesk_adamw", [keras.metrics.sparse_categorical_accuracy]),
    ("text_classifier", "bertdesk_adamw", [keras.metrics.SparseCategoricalAccuracy()])]


@pytest.mark.parametrize("kind,optimizer,metrics", CASES)
def test_the_optimizer_is_built_before_the_first_trace(kind, optimizer, metrics):
    make, policy = OPTIMIZERS[optimizer]
    weights, slots, first, built, logs = _train(kind, make, policy, False, metrics)
    keras_weights, keras_slots, keras_first, keras_built, keras_logs = _train(
        kind, make, policy, True, copy.deepcopy(metrics))
    if TENSORFLOW:  # Keras builds the optimizer inside the trace, which then runs twice
        assert (first, built) == (1, True)
        assert (keras_first, keras_built) == (2, False)
    else:  # JAX and PyTorch: Keras' own order, unchanged
        assert (first, built) == (keras_first, keras_built)
    assert [name for name, _ in slots] == [name for name, _ in keras_slots]
    for (name, value), (_, keras_value) in zip(slots, keras_slots):
        np.testing.assert_allclose(value, keras_value, rtol=1e-5, atol=1e-6, err_msg=name)
    for ours, theirs in zip(weights, keras_weights, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # the same logs: each loss's tracker and each metric, under the same names
    assert logs.keys() == keras_logs.keys(), (logs, keras_logs)
    assert len(logs) == 1 + len(metrics or ()) + (2 if kind == "pretraining" else 0), logs
    for name in logs:
        np.testing.assert_allclose(logs[name], keras_logs[name], rtol=1e-5, err_msg=name)


def test_what_keras_would_build_in_the_step():
    """Only what makes variables is built ahead: several losses' trackers,
    metrics by name or function. One loss and metric objects (the
    fine-tuning job's models) need no symbolic pass."""
    from bertdesk.models.builds_optimizer_first import _builds_variables_in_the_trace

    def compiled(kind, **kw):
        model, _, _ = MODELS[kind]()
        model.compile(optimizer="sgd", loss=kw.pop("loss", model.loss), **kw)
        return model

    assert _builds_variables_in_the_trace(compiled("pretraining"))
    assert not _builds_variables_in_the_trace(compiled("text_classifier"))
    assert not _builds_variables_in_the_trace(compiled("question_answerer"))
    assert not _builds_variables_in_the_trace(
        compiled("text_classifier", metrics=[keras.metrics.SparseCategoricalAccuracy()]))
    assert _builds_variables_in_the_trace(compiled("text_classifier", metrics=["accuracy"]))
    assert _builds_variables_in_the_trace(
        compiled("text_classifier", weighted_metrics=[keras.metrics.sparse_categorical_accuracy]))
