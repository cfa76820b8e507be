"""Next-sentence-prediction head on the pooled output."""

import keras
from keras import ops

from bertdesk.layers.eager_calls import dense


# === Layer ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertNSPHead(keras.layers.Layer):
    """BERT's `cls/seq_relationship`: `(batch, hidden)` pooled output to
    float32 logits `(batch, 2)`; class 0 means "B follows A"."""

    def __init__(self, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_range = initializer_range

    def build(self, input_shape):
        self.dense = keras.layers.Dense(
            2,
            kernel_initializer=keras.initializers.RandomNormal(
                stddev=self.initializer_range
            ),
            dtype=self.dtype_policy,
            name="dense",
        )
        self.dense.build(input_shape)
        self.built = True

    def call(self, pooled_output):
        return ops.cast(dense(self.dense, pooled_output), "float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2)

    def get_config(self):
        config = super().get_config()
        config.update({"initializer_range": self.initializer_range})
        return config
