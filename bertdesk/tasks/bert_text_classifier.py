"""Text classification (single or pair; multi-class, multi-label, regression)."""

import keras
from keras import ops

from bertdesk.layers.eager_calls import call_layer
from bertdesk.models.bert_backbone import BACKBONE_INPUTS, BackboneAsOneLayer
from bertdesk.models.runs_graph_directly import RunsGraphDirectly
from bertdesk.tasks.task_model import BackboneTaskModel


# === Model ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertTextClassifier(BackboneAsOneLayer, BackboneTaskModel, RunsGraphDirectly,
                         keras.Model):
    """Backbone + dropout + dense on the pooled [CLS] output, as in
    transformers' `BertForSequenceClassification` (whose `classifier`
    weights these map to).

    Args:
        backbone: a `BertBackbone`.
        num_classes: outputs (1 for regression).
        problem_type: "single_label" (softmax), "multi_label" (sigmoid per
            class) or "regression".
        dropout: dropout before the classifier (default: the backbone's).

    Output: `logits` `(batch, num_classes)`, float32.
    """

    config_keys = ("num_classes", "problem_type", "dropout")

    def __init__(self, backbone, num_classes, problem_type="single_label", dropout=None,
                 **kwargs):
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
        self._show_backbone_as_one_layer(backbone)
        outputs = _classify(inputs, backbone, dropout_layer, classifier)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.num_classes = num_classes
        self.problem_type = problem_type
        self.dropout = dropout
        self.classifier = classifier
        object.__setattr__(self, "_dropout_layer", dropout_layer)  # untracked: in the graph

    def _wire(self, inputs, training=None):
        return _classify(inputs, self.backbone, self._dropout_layer, self.classifier, training)


def _classify(inputs, backbone, dropout_layer, classifier, training=None):
    """The classifier's outputs: its graph, and what it runs on PyTorch."""
    # Only [CLS] is read: the last layer runs at that position alone.
    pooled = call_layer(backbone.pooler, backbone.encode_positions(inputs, training=training))
    pooled = call_layer(dropout_layer, pooled, training=training)  # (batch, hidden)
    return {"logits": ops.cast(call_layer(classifier, pooled), "float32")}
