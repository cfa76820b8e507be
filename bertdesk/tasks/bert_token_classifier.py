"""Token classification (NER): a label per word piece."""

import keras
from keras import ops

from bertdesk.models.bert_backbone import BACKBONE_INPUTS

IGNORE_INDEX = -100  # targets at sub-word continuations and padding


# === Model ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertTokenClassifier(keras.Model):
    """Backbone + dropout + dense on every token, as transformers'
    `BertForTokenClassification` (whose `classifier` weights these map to).

    Output: `logits` `(batch, seq, num_classes)`, float32. Train with targets
    `IGNORE_INDEX` wherever no label applies (see `bertdesk.data.ner`).
    """

    def __init__(self, backbone, num_classes, dropout=None, **kwargs):
        # === Layers ===
        dropout = backbone.dropout if dropout is None else dropout
        dropout_layer = keras.layers.Dropout(dropout, name="classifier_dropout")
        classifier = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.RandomNormal(stddev=backbone.initializer_range),
            dtype=backbone.embeddings.dtype_policy,
            name="classifier",
        )

        # === Functional model ===
        inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name)
                  for name in BACKBONE_INPUTS}
        sequence = backbone(inputs)["sequence_output"]  # (batch, seq, hidden)
        logits = ops.cast(classifier(dropout_layer(sequence)), "float32")
        super().__init__(inputs=inputs, outputs={"logits": logits}, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = dropout
        self.classifier = classifier

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "backbone": keras.layers.serialize(self.backbone),
                "num_classes": self.num_classes, "dropout": self.dropout}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)

    def head_tensors(self):
        import numpy as np

        return {"classifier.weight": np.asarray(ops.convert_to_numpy(self.classifier.kernel)).T,
                "classifier.bias": np.asarray(ops.convert_to_numpy(self.classifier.bias))}
