"""Cross-entropy with a weight per class, for imbalanced classification."""

import math

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="bertdesk")
class ClassWeightedCrossentropy(keras.losses.Loss):
    """Softmax cross-entropy of integer labels from logits, each example's
    loss times its label's weight: Keras' `fit(class_weight=...)` and
    scikit-learn's `class_weight`, for a model whose outputs are a dict
    (where `fit`'s own does not apply). The batch's loss is the mean over
    its examples (Keras' reduction; sample weights still multiply), not
    PyTorch's `CrossEntropyLoss(weight=...)` mean over the weights' sum: with
    `balanced_class_weights` the weights average 1 over the training set, so
    the loss keeps its scale either way.

    Args:
        class_weights: one positive number per class, in the logits' order.
    """

    def __init__(self, class_weights, name="class_weighted_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = [float(w) for w in class_weights]
        if not self.class_weights or not all(
                math.isfinite(w) and w > 0 for w in self.class_weights):
            raise ValueError(f"class_weights must be positive numbers, got {class_weights!r}")

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")  # (batch,)
        loss = keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(y_pred, "float32"), from_logits=True)  # (batch,)
        weights = ops.take(ops.convert_to_tensor(self.class_weights, "float32"), labels)
        return loss * weights

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


def balanced_class_weights(label_ids, num_classes):
    """scikit-learn's "balanced" weights: n / (classes x count of the
    class), so each class weighs the same in total and the weights average
    1 over the examples. Every class must occur."""
    counts = np.bincount(np.asarray(label_ids, np.int64), minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"no example of classes {np.flatnonzero(counts == 0).tolist()}")
    return (counts.sum() / (num_classes * counts)).tolist()
