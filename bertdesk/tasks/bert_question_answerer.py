"""Extractive question answering: start and end logits per token."""

import keras
import numpy as np
from keras import ops

from bertdesk.layers.eager_calls import call_layer
from bertdesk.models.bert_backbone import BACKBONE_INPUTS
from bertdesk.models.runs_graph_directly import RunsGraphDirectly
from bertdesk.tasks.task_model import BackboneTaskModel


# === Model ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertQuestionAnswerer(BackboneTaskModel, RunsGraphDirectly, keras.Model):
    """Backbone + one dense layer to two logits per token, as transformers'
    `BertForQuestionAnswering` (`qa_outputs`). Padding positions get a very
    low logit so they are never chosen.

    Output: `logits` `(batch, seq, 2)` float32, start then end logits.
    Train with `SpanLoss` on targets `(batch, 2)` (start and end token).
    """

    config_keys = ()

    def __init__(self, backbone, **kwargs):
        # === Layers ===
        qa_outputs = keras.layers.Dense(
            2,
            kernel_initializer=keras.initializers.RandomNormal(stddev=backbone.initializer_range),
            dtype=backbone.embeddings.dtype_policy,
            name="qa_outputs",
        )

        # === Functional model ===
        inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name)
                  for name in BACKBONE_INPUTS}
        outputs = _find_spans(inputs, backbone, qa_outputs)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.classifier = qa_outputs
        self.num_classes = 2

    def _wire(self, inputs, training=None):
        return _find_spans(inputs, self.backbone, self.classifier, training)

    def head_tensors(self):
        return {"qa_outputs.weight": np.asarray(ops.convert_to_numpy(self.classifier.kernel)).T,
                "qa_outputs.bias": np.asarray(ops.convert_to_numpy(self.classifier.bias))}


def _find_spans(inputs, backbone, qa_outputs, training=None):
    """The span head's outputs: its graph, and what it runs on PyTorch."""
    sequence = call_layer(backbone, inputs, training=training)["sequence_output"]
    logits = ops.cast(call_layer(qa_outputs, sequence), "float32")  # (batch, seq, 2)
    real = ops.cast(inputs["padding_mask"], "bool")
    return {"logits": ops.where(real[..., None], logits, -1e4)}


@keras.saving.register_keras_serializable(package="bertdesk")
class SpanLoss(keras.losses.Loss):
    """Mean of the start and end cross-entropies over token positions, as
    transformers' `BertForQuestionAnswering` computes it."""

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")  # (batch, 2)
        start = keras.losses.sparse_categorical_crossentropy(
            y_true[:, 0], y_pred[..., 0], from_logits=True)
        end = keras.losses.sparse_categorical_crossentropy(
            y_true[:, 1], y_pred[..., 1], from_logits=True)
        return (start + end) / 2
