"""bertdesk's functional models run their wiring as plain calls on PyTorch
(`RunsGraphDirectly`, `eager_calls.call_layer`): the same numbers, gradients,
dropout masks and output keys as Keras' walk over the graph, and no layer
call left behind."""

import collections
import gc
import weakref

import keras
import numpy as np
import pytest
from harness import assert_outputs_close, to_np
from keras.src.models.functional import Functional

import bertdesk
from bertdesk.layers.eager_calls import call_layer
from bertdesk.models.bert_pretraining_model import BertPretrainingModel
from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer
from bertdesk.tasks.bert_text_classifier import BertTextClassifier
from bertdesk.tasks.bert_token_classifier import BertTokenClassifier

IS_TORCH = keras.backend.backend() == "torch"
VOCAB = 97


def _backbone(dtype=None, **kwargs):
    return bertdesk.BertBackbone(vocabulary_size=VOCAB, num_layers=2, hidden_dim=32,
                                 num_heads=2, intermediate_dim=64, dtype=dtype, **kwargs)


def _inputs(with_positions=False):
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(1, VOCAB, (2, 9)).astype("int32"),
         "segment_ids": np.array([[0] * 5 + [1] * 4] * 2, "int32"),
         "padding_mask": np.array([[1] * 9, [1] * 6 + [0] * 3], "int32")}
    if with_positions:
        x["mask_positions"] = np.array([[1, 3], [2, 4]], "int32")
    return x


MODELS = {
    "backbone": lambda bb: bb,
    "text_classifier": lambda bb: BertTextClassifier(bb, num_classes=3),
    "token_classifier": lambda bb: BertTokenClassifier(bb, num_classes=4),
    "question_answerer": BertQuestionAnswerer,
    "pretraining": BertPretrainingModel,
}


def _model(name, dtype=None):
    backbone = _backbone(dtype, output_hidden_states=name == "backbone",
                         output_attentions=name == "backbone")
    return MODELS[name](backbone), _inputs(with_positions=name == "pretraining")


def _graph_walk(model, x, training):
    return Functional.call(model, x, training=training)


@pytest.mark.parametrize("dtype", [None, "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_wiring_gives_the_graphs_outputs(name, dtype):
    """`_wire`, run eagerly with each layer through `call_layer`, against
    Keras' graph walk; on PyTorch `model(x)` is `_wire`."""
    model, x = _model(name, dtype)
    tensors = {k: keras.ops.convert_to_tensor(v) for k, v in x.items()}
    graph = _graph_walk(model, tensors, False)
    wired = model._wire(tensors, training=False)
    called = model(x, training=False)
    assert list(called) == list(graph)  # keyed in the order Keras' call keys them
    assert sorted(wired) == sorted(graph)
    for out in (wired, called):
        for key in graph:
            assert keras.backend.standardize_dtype(out[key].dtype) == \
                keras.backend.standardize_dtype(graph[key].dtype), key
    assert_outputs_close(wired, graph, atol=0, rtol=0)
    assert_outputs_close(called, graph, atol=0, rtol=0)


@pytest.mark.skipif(not IS_TORCH, reason="elsewhere `call` is Keras' own graph walk")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_calls_draw_the_graphs_masks_and_gradients(name):
    """Dropout on: the same masks (torch's global generator, reseeded), the
    same outputs, and the same gradient for every weight."""
    import torch

    model, x = _model(name)
    tensors = {k: keras.ops.convert_to_tensor(v) for k, v in x.items()}

    def outputs_and_grads(run):
        keras.utils.set_random_seed(7)
        out = run(tensors, True)
        model.zero_grad(set_to_none=True)
        sum(o.float().square().sum() for o in out.values()).backward()
        return ({k: v.detach() for k, v in out.items()},
                [w.value.grad for w in model.trainable_weights])

    direct, direct_grads = outputs_and_grads(lambda t, training: model(t, training=training))
    graph, graph_grads = outputs_and_grads(lambda t, training: _graph_walk(model, t, training))
    assert_outputs_close(direct, graph, atol=0, rtol=0)
    keras.utils.set_random_seed(8)
    assert not np.array_equal(to_np(model(tensors, training=True)[sorted(graph)[0]]),
                              to_np(graph[sorted(graph)[0]]))  # dropout does draw masks
    for w, a, b in zip(model.trainable_weights, direct_grads, graph_grads):
        assert (a is None) == (b is None), w.path
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=w.path)


@pytest.mark.skipif(not IS_TORCH, reason="the direct calls are PyTorch's")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_call_makes_one_layer_call(name, monkeypatch):
    """On PyTorch the model's own `Layer.__call__` is the only one: each
    layer below runs through `call_layer` (a fallback to Keras' graph walk,
    or a layer called through `__call__`, shows here, not in the numbers)."""
    model, x = _model(name)
    model(x)  # built
    calls = collections.Counter()
    layer_call = keras.layers.Layer.__call__

    def counting(self, *args, **kwargs):
        calls[type(self).__name__] += 1
        return layer_call(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counting)
    model(x, training=True)
    model.predict_on_batch(x)
    assert calls == {type(model).__name__: 2}


@pytest.mark.skipif(not IS_TORCH, reason="under XLA the compiler frees what is dead")
@pytest.mark.parametrize("output_hidden_states", [False, True])
def test_inference_frees_each_layers_output_as_the_next_runs(output_hidden_states,
                                                              monkeypatch):
    """Eager inference holds one layer's output at a time, not all of them
    to the end of the call (at base, batch 16 x 128, 13 of them were 82 MB
    of the peak): the first layer's output is gone when the last layer
    runs, unless the caller asked for every hidden state."""
    import torch

    backbone = bertdesk.BertBackbone(vocabulary_size=VOCAB, num_layers=3, hidden_dim=32,
                                     num_heads=2, intermediate_dim=64,
                                     output_hidden_states=output_hidden_states)
    x = _inputs()
    backbone(x)  # built
    first, last = backbone.encoder_layers[0], backbone.encoder_layers[-1]
    seen = {}

    def remembering(*args, **kwargs):
        out = type(first).call(first, *args, **kwargs)
        seen["first"] = weakref.ref(out)
        return out

    def checking(*args, **kwargs):
        gc.collect()
        seen["alive_at_last"] = seen["first"]() is not None
        return type(last).call(last, *args, **kwargs)

    monkeypatch.setattr(first, "call", remembering)
    monkeypatch.setattr(last, "call", checking)
    with torch.no_grad():
        outputs = backbone(x, training=False)
    assert seen["alive_at_last"] == output_hidden_states
    assert ("hidden_states" in outputs) == output_hidden_states


def test_inputs_are_checked_and_converted_as_keras_does():
    """int64 arrays are converted as Keras' own call converts them; a missing
    or an extra key is refused by Keras' checks, on both paths."""
    model, x = _model("text_classifier")
    expected = to_np(model(x)["logits"])
    as_int64 = {k: v.astype("int64") for k, v in x.items()}
    np.testing.assert_array_equal(to_np(model(as_int64)["logits"]), expected)
    # (compiled on JAX and TensorFlow: XLA's fusions round differently)
    np.testing.assert_allclose(to_np(model.predict_on_batch(as_int64)["logits"]), expected,
                               rtol=1e-5, atol=1e-6)
    missing = {k: v for k, v in x.items() if k != "padding_mask"}
    extra = dict(x, labels=np.zeros((2,), "int32"))
    for bad in (missing, extra):
        for run in (model, lambda inputs: _graph_walk(model, inputs, False)):
            with pytest.raises(ValueError):
                run(bad)


def test_call_layer_sets_up_what_layer_call_does():
    """A mixed-precision Dense gets a float32 input cast and its kernel read
    in bfloat16, a Dropout its `training`, and symbolic inputs build a node."""
    dense = keras.layers.Dense(4, dtype="mixed_bfloat16")
    dense.build((None, 3))
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(2, 3)), "float32")
    out = call_layer(dense, x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_array_equal(to_np(out), to_np(dense(x)))

    dropout = keras.layers.Dropout(0.5)
    dropout.build((2, 64))
    ones = keras.ops.ones((2, 64))
    assert np.all(to_np(call_layer(dropout, ones)) == 1)
    assert np.all(to_np(call_layer(dropout, ones, training=False)) == 1)
    dropped = to_np(call_layer(dropout, ones, training=True))
    assert set(np.unique(dropped)) == {0.0, 2.0}

    symbolic = keras.Input((3,))
    node_out = call_layer(dense, symbolic)
    assert isinstance(node_out, keras.KerasTensor)
    assert tuple(node_out.shape) == (None, 4)


def _quantize(model, mode):
    """`model.quantize(mode)` with the objects alive now frozen out of the
    garbage collector: Keras runs a full `gc.collect()` for every variable
    it deletes (`Layer.__delattr__`), 13 times here, and over a test
    process's heap each took seconds (54 s for one of these tests on JAX)."""
    gc.freeze()
    try:
        model.quantize(mode)
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("name", ["text_classifier", "token_classifier"])
def test_a_quantized_model_runs_its_quantized_layers(name):
    """Keras runs a quantized layer through `quantized_call`, not `call`:
    after `model.quantize("int8")` the model's call gives the graph walk's
    logits (reading the int8 kernels as floats gave logits off by 50)."""
    model, x = _model(name)
    float_logits = to_np(model(x)["logits"])
    _quantize(model, "int8")
    assert model.classifier.quantization_mode == "int8"
    logits = to_np(model(x)["logits"])
    np.testing.assert_allclose(logits, to_np(_graph_walk(model, x, False)["logits"]),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logits, float_logits, atol=0.1)  # int8 rounding only
