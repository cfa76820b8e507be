"""Token classification (NER): a label per word piece."""

import keras
from keras import ops

from bertdesk.layers.eager_calls import call_layer
from bertdesk.models.bert_backbone import BACKBONE_INPUTS
from bertdesk.models.runs_graph_directly import RunsGraphDirectly
from bertdesk.tasks.task_model import BackboneTaskModel

IGNORE_INDEX = -100  # targets at sub-word continuations and padding


# === Model ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertTokenClassifier(BackboneTaskModel, RunsGraphDirectly, keras.Model):
    """Backbone + dropout + dense on every token, as transformers'
    `BertForTokenClassification` (whose `classifier` weights these map to).

    Output: `logits` `(batch, seq, num_classes)`, float32. Train with targets
    `IGNORE_INDEX` wherever no label applies (see `bertdesk.data.ner`).
    """

    config_keys = ("num_classes", "dropout")

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
        outputs = _tag(inputs, backbone, dropout_layer, classifier)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = dropout
        self.classifier = classifier
        object.__setattr__(self, "_dropout_layer", dropout_layer)  # untracked: in the graph

    def _wire(self, inputs, training=None):
        return _tag(inputs, self.backbone, self._dropout_layer, self.classifier, training)


def _tag(inputs, backbone, dropout_layer, classifier, training=None):
    """The tagger's outputs: its graph, and what it runs on PyTorch."""
    sequence = call_layer(backbone, inputs, training=training)["sequence_output"]
    sequence = call_layer(dropout_layer, sequence, training=training)  # (batch, seq, hidden)
    return {"logits": ops.cast(call_layer(classifier, sequence), "float32")}
