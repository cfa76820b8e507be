"""Cross-entropies with a weight per class, for imbalanced classification:
single-label (a weight per class) and multi-label (a weight on each label's
positive examples)."""

import math

import keras
import numpy as np
from keras import ops


def _positive_numbers(values, name):
    numbers = [float(w) for w in values]
    if not numbers or not all(math.isfinite(w) and w > 0 for w in numbers):
        raise ValueError(f"{name} must be positive numbers, got {values!r}")
    return numbers


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
        self.class_weights = _positive_numbers(class_weights, "class_weights")

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")  # (batch,)
        loss = keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(y_pred, "float32"), from_logits=True)  # (batch,)
        weights = ops.take(ops.convert_to_tensor(self.class_weights, "float32"), labels)
        return loss * weights

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="bertdesk")
class PositiveWeightedBinaryCrossentropy(keras.losses.Loss):
    """Multi-label sigmoid cross-entropy from logits with each label's
    positive term times its weight, averaged over the labels: PyTorch's
    `BCEWithLogitsLoss(pos_weight=...)` (a weight above 1 trades precision
    for recall on that label), here per example, then Keras' mean over the
    batch.

    Args:
        positive_weights: one positive number per label, in the logits' order.
    """

    def __init__(self, positive_weights, name="positive_weighted_binary_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weights = _positive_numbers(positive_weights, "positive_weights")

    def call(self, y_true, y_pred):
        y = ops.cast(y_true, "float32")  # (batch, labels)
        x = ops.cast(y_pred, "float32")
        weight = ops.convert_to_tensor(self.positive_weights, "float32")
        # -(w y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))), written stably as
        # (1 - y) x + (1 + (w - 1) y) softplus(-x)
        loss = (1.0 - y) * x + (1.0 + (weight - 1.0) * y) * ops.softplus(-x)
        return ops.mean(loss, axis=-1)

    def get_config(self):
        return {**super().get_config(), "positive_weights": self.positive_weights}


def balanced_positive_weights(targets):
    """Each label's negatives over its positives in `targets` (examples x
    labels, 0/1), PyTorch's suggested `pos_weight`, so a label's positive and
    negative examples weigh the same in total; 1 for a label that every
    example has. Every label must occur."""
    targets = np.asarray(targets, np.float64)
    positives = targets.sum(0)
    if (positives == 0).any():
        raise ValueError(f"no example of labels {np.flatnonzero(positives == 0).tolist()}")
    negatives = len(targets) - positives
    return np.where(negatives > 0, negatives / positives, 1.0).tolist()


def balanced_class_weights(label_ids, num_classes):
    """scikit-learn's "balanced" weights: n / (classes x count of the
    class), so each class weighs the same in total and the weights average
    1 over the examples. Every class must occur."""
    counts = np.bincount(np.asarray(label_ids, np.int64), minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"no example of classes {np.flatnonzero(counts == 0).tolist()}")
    return (counts.sum() / (num_classes * counts)).tolist()
