"""Training steps free their gradients once the optimizer has used them
(`ReleasesGradients`; on PyTorch: JAX and TensorFlow keep none, and there
the step must stay Keras' own)."""

from unittest import mock

import keras
import numpy as np
import pytest
from conftest import BACKEND, TINY, random_batch

import bertdesk
from bertdesk.layers.bert_embeddings import BertEmbeddings
from bertdesk.models import ReleasesGradients
from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer, SpanLoss
from bertdesk.tasks.bert_text_classifier import BertTextClassifier
from bertdesk.tasks.bert_token_classifier import BertTokenClassifier

TORCH = BACKEND == "torch"
NO_DROPOUT = dict(TINY, dropout=0.0, attention_dropout=0.0)


def _text_classifier():
    model = BertTextClassifier(bertdesk.BertBackbone(**NO_DROPOUT), num_classes=3)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, random_batch(), np.array([0, 2, 1], "int32")


def _token_classifier():
    model = BertTokenClassifier(bertdesk.BertBackbone(**NO_DROPOUT), num_classes=4)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.random.default_rng(1).integers(0, 4, (3, 10)).astype("int32")
    return model, random_batch(), labels


def _question_answerer():
    model = BertQuestionAnswerer(bertdesk.BertBackbone(**NO_DROPOUT))
    model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss={"logits": SpanLoss()})
    return model, random_batch(), {"logits": np.array([[1, 2], [3, 3], [0, 0]], "int32")}


def _pretraining_model():
    model = bertdesk.BertPretrainingModel(bertdesk.BertBackbone(**NO_DROPOUT))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2),
                  loss={"mlm_logits": loss, "nsp_logits": loss})
    x = random_batch()
    x["mask_positions"] = np.array([[1, 2], [3, 0], [0, 1]], "int32")
    y = {"mlm_logits": np.array([[5, 6], [7, 8], [9, 10]], "int32"),
         "nsp_logits": np.array([0, 1, 1], "int32")}
    return model, x, y


MODELS = {"text_classifier": _text_classifier, "token_classifier": _token_classifier,
          "question_answerer": _question_answerer, "pretraining": _pretraining_model}


def _train(model, x, y, steps=3):
    """Losses of `steps` training steps, and for each step whether any
    gradient was alive while its forward pass ran."""
    held, embeddings_call = [], BertEmbeddings.call

    def spying_call(layer, *args, **kwargs):
        if kwargs.get("training") and TORCH:
            held.append(any(v.value.grad is not None for v in model.trainable_weights))
        return embeddings_call(layer, *args, **kwargs)

    with mock.patch.object(BertEmbeddings, "call", spying_call):
        losses = [float(np.ravel(model.train_on_batch(x, y))[0]) for _ in range(steps)]
    return losses, held


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_no_gradient_outlives_its_step(kind):
    keras.utils.set_random_seed(0)
    model, x, y = MODELS[kind]()
    assert isinstance(model, ReleasesGradients)
    losses, held = _train(model, x, y)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    if TORCH:
        assert len(held) == 3 and not any(held)
        assert all(v.value.grad is None for v in model.trainable_weights)

    # Keras' own step keeps them into the next forward pass (why the mixin
    # exists), and the same weights train to the same losses either way.
    keras.utils.set_random_seed(0)
    plain, x, y = MODELS[kind]()
    with mock.patch.object(ReleasesGradients, "train_step", keras.Model.train_step):
        plain_losses, plain_held = _train(plain, x, y)
    if TORCH:
        assert plain_held == [False, True, True]
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-6, atol=1e-7)
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_users_mix_it_into_their_own_models():
    class Regressor(ReleasesGradients, keras.Model):
        pass

    inputs = keras.Input((4,))
    model = Regressor(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="adam", loss="mse")
    before = model.get_weights()
    model.train_on_batch(np.ones((2, 4), "float32"), np.zeros((2, 1), "float32"))
    assert not np.allclose(before[0], model.get_weights()[0])
    if TORCH:
        assert all(v.value.grad is None for v in model.trainable_weights)
