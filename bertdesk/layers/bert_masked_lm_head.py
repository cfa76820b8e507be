"""Masked-LM head whose output projection is tied to the token embedding."""

import keras
from keras import ops

from bertdesk.layers import fused_kernels
from bertdesk.layers.bert_encoder_block import gelu
from bertdesk.layers.eager_calls import dense, layer_norm, weight


# === Layer ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertMaskedLMHead(keras.layers.Layer):
    """BERT's `cls/predictions`: dense + GELU + LayerNorm, then logits over the
    vocabulary through the *transposed token embedding matrix* plus a bias.

    Logits are computed only at `mask_positions`, never over the whole
    sequence: `(batch, num_masked, vocab)` instead of `(batch, seq, vocab)`.

    Args:
        token_embedding: the backbone's `keras.layers.Embedding` whose matrix is
            shared. Not serialised; the owning model passes it again on load.
        layer_norm_epsilon: LayerNorm epsilon.
        initializer_range: std of the normal kernel initialiser.

    Call args:
        sequence_output: `(batch, seq, hidden)`.
        mask_positions: int `(batch, num_masked)` indices into `seq`; None
            when `sequence_output` already holds the masked positions only
            (`BertBackbone.encode_positions`).

    Returns:
        float32 logits `(batch, num_masked, vocab)`.
    """

    def __init__(
        self,
        token_embedding=None,
        layer_norm_epsilon=1e-12,
        initializer_range=0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.token_embedding = token_embedding
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range

    def build(self, sequence_output_shape, mask_positions_shape=None):
        if self.token_embedding is None:
            raise ValueError(
                "BertMaskedLMHead needs `token_embedding` (the backbone's "
                "token embedding layer) to tie its output weights."
            )
        hidden = sequence_output_shape[-1]
        self.transform = keras.layers.Dense(
            hidden,
            activation=gelu,
            kernel_initializer=keras.initializers.RandomNormal(
                stddev=self.initializer_range
            ),
            dtype=self.dtype_policy,
            name="transform",
        )
        self.transform.build((None, None, hidden))
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="layer_norm"
        )
        self.layer_norm.build((None, None, hidden))
        self.output_bias = self.add_weight(
            name="output_bias",
            shape=(self.token_embedding.input_dim,),
            initializer="zeros",
        )
        self.built = True

    def call(self, sequence_output, mask_positions=None):
        x = sequence_output
        if mask_positions is not None:  # (batch, num_masked, hidden)
            x = ops.take_along_axis(x, ops.expand_dims(mask_positions, -1), axis=1)
        x = layer_norm(self.layer_norm, dense(self.transform, x))  # (batch, num_masked, hidden)
        matrix = weight(self.token_embedding.embeddings, x.dtype)  # (vocab, hidden)
        bias = ops.cast(self.output_bias, "float32")
        if keras.backend.backend() == "torch":
            # The table's gradient (vocab, hidden) and contiguous, as the
            # lookup's is: einsum's comes out transposed, and adding the two
            # then runs across strides (33 ms of a 390 ms BERT-mini
            # pretraining step on the CPU, and a contiguous copy of it 14).
            return fused_kernels.linear_transposed(x, matrix, bias)
        logits = ops.einsum("bmh,vh->bmv", x, matrix)
        return ops.cast(logits, "float32") + bias

    def compute_output_shape(self, sequence_output_shape, mask_positions_shape=None):
        rows = sequence_output_shape[:-1] if mask_positions_shape is None else mask_positions_shape
        return tuple(rows) + (self.token_embedding.input_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "initializer_range": self.initializer_range,
            }
        )
        return config
