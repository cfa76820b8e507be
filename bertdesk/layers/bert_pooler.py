"""The [CLS] pooler: dense + tanh on the first token."""

import keras

from bertdesk.layers.eager_calls import dense


# === Layer ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertPooler(keras.layers.Layer):
    """Takes the first token of `(batch, seq, hidden)` and returns
    `tanh(W h + b)`, `(batch, hidden)`."""

    def __init__(self, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_range = initializer_range

    def build(self, input_shape):
        self.dense = keras.layers.Dense(
            input_shape[-1],
            activation="tanh",
            kernel_initializer=keras.initializers.RandomNormal(
                stddev=self.initializer_range
            ),
            dtype=self.dtype_policy,
            name="dense",
        )
        self.dense.build((input_shape[0], input_shape[-1]))
        self.built = True

    def call(self, sequence_output):
        return dense(self.dense, sequence_output[:, 0, :])  # (batch, hidden)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"initializer_range": self.initializer_range})
        return config
