"""Token + position + segment embeddings, followed by LayerNorm and dropout."""

import keras
from keras import ops

from bertdesk.layers.bert_dropout import BertDropout
from bertdesk.layers.eager_calls import call_layer, embed, layer_norm


# === Layer ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertEmbeddings(keras.layers.Layer):
    """BERT input embeddings.

    Sums a word-piece embedding, a learned absolute position embedding and a
    segment (token type) embedding, then applies LayerNorm and dropout, as in
    google-research/bert `embedding_postprocessor`.

    Args:
        vocabulary_size: number of word pieces.
        hidden_dim: embedding width.
        max_sequence_length: number of learned positions.
        type_vocabulary_size: number of segments (2 for sentence pairs).
        dropout: dropout rate after LayerNorm.
        layer_norm_epsilon: LayerNorm epsilon (1e-12 in the reference).
        initializer_range: std of the normal initialiser (as in transformers).

    Call args:
        token_ids: int tensor `(batch, seq)`.
        segment_ids: int tensor `(batch, seq)`.

    Returns:
        `(batch, seq, hidden_dim)` embeddings.
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        max_sequence_length=512,
        type_vocabulary_size=2,
        dropout=0.1,
        layer_norm_epsilon=1e-12,
        initializer_range=0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.max_sequence_length = max_sequence_length
        self.type_vocabulary_size = type_vocabulary_size
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range

    def build(self, token_ids_shape, segment_ids_shape=None):
        init = keras.initializers.RandomNormal(stddev=self.initializer_range)
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            self.hidden_dim,
            embeddings_initializer=init,
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.position_embedding = keras.layers.Embedding(
            self.max_sequence_length,
            self.hidden_dim,
            embeddings_initializer=init,
            dtype=self.dtype_policy,
            name="position_embedding",
        )
        self.segment_embedding = keras.layers.Embedding(
            self.type_vocabulary_size,
            self.hidden_dim,
            embeddings_initializer=init,
            dtype=self.dtype_policy,
            name="segment_embedding",
        )
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="layer_norm",
        )
        self.dropout_layer = BertDropout(
            self.dropout, dtype=self.dtype_policy, name="dropout"
        )
        self.token_embedding.build(token_ids_shape)
        self.position_embedding.build((None,))
        self.segment_embedding.build(token_ids_shape)
        self.layer_norm.build(tuple(token_ids_shape) + (self.hidden_dim,))
        self.built = True

    def call(self, token_ids, segment_ids=None, training=None):
        seq_length = ops.shape(token_ids)[1]
        if isinstance(seq_length, int) and seq_length > self.max_sequence_length:
            # past the position table JAX reads NaN rows without a word,
            # PyTorch and TensorFlow fail with an index error
            raise ValueError(f"token_ids has {seq_length} positions, more than the model's "
                             f"{self.max_sequence_length} (max_sequence_length): cut the input "
                             "to at most that many tokens (the tokenizer's max_length)")
        x = embed(self.token_embedding, token_ids)  # (batch, seq, hidden)
        positions = ops.arange(seq_length, dtype="int32")
        x = x + ops.expand_dims(embed(self.position_embedding, positions), 0)
        if segment_ids is None:
            segment_ids = ops.zeros_like(token_ids)
        x = x + embed(self.segment_embedding, segment_ids)
        x = layer_norm(self.layer_norm, x)
        if not training:  # no dropout layer call (its overhead) in inference
            return x
        return call_layer(self.dropout_layer, x, training=training)

    def compute_output_shape(self, token_ids_shape, segment_ids_shape=None):
        return tuple(token_ids_shape) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "max_sequence_length": self.max_sequence_length,
                "type_vocabulary_size": self.type_vocabulary_size,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "initializer_range": self.initializer_range,
            }
        )
        return config
