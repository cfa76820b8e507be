"""Extractive question answering: start and end logits per token."""

import keras
import numpy as np
from keras import ops

from bertdesk.models.bert_backbone import BACKBONE_INPUTS
from bertdesk.tasks.task_model import BackboneTaskModel


# === Model ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertQuestionAnswerer(BackboneTaskModel, keras.Model):
    """Backbone + one dense layer to two logits per token, as transformers'
    `BertForQuestionAnswering` (`qa_outputs`). Padding positions get a very
    low logit so they are never chosen.

    Outputs: `start_logits` and `end_logits`, `(batch, seq)`, float32.
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
        sequence = backbone(inputs)["sequence_output"]  # (batch, seq, hidden)
        logits = ops.cast(qa_outputs(sequence), "float32")  # (batch, seq, 2)
        real = ops.cast(inputs["padding_mask"], "bool")
        start = ops.where(real, logits[..., 0], -1e4)
        end = ops.where(real, logits[..., 1], -1e4)
        super().__init__(inputs=inputs, outputs={"start_logits": start, "end_logits": end},
                         **kwargs)

        # === Config ===
        self.backbone = backbone
        self.classifier = qa_outputs
        self.num_classes = 2

    def head_tensors(self):
        return {"qa_outputs.weight": np.asarray(ops.convert_to_numpy(self.classifier.kernel)).T,
                "qa_outputs.bias": np.asarray(ops.convert_to_numpy(self.classifier.bias))}
