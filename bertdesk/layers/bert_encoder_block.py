"""Post-LayerNorm transformer encoder block, as in the original BERT."""

import keras

from bertdesk.layers import fused_kernels
from bertdesk.layers.bert_dropout import BertDropout
from bertdesk.layers.bert_self_attention import BertSelfAttention
from bertdesk.layers.eager_calls import call_layer, dense, layer_norm, weight
from bertdesk.layers.lean_backward import feed_forward, gelu

__all__ = ["BertEncoderBlock", "gelu"]


# === Layer ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertEncoderBlock(keras.layers.Layer):
    """One BERT layer: self-attention and feed-forward, each followed by
    dropout, a residual connection and LayerNorm (post-LN).

    Sublayer names mirror the checkpoint structure
    (`attention/{self,output}`, `intermediate`, `output`) so importers map
    weights by name.

    Args:
        num_heads: attention heads.
        intermediate_dim: feed-forward width (4 * hidden in BERT).
        dropout: dropout after the attention output and the feed-forward.
        attention_dropout: dropout on attention probabilities.
        layer_norm_epsilon: LayerNorm epsilon.
        initializer_range: std of the normal kernel initialiser.
        use_fused_attention: see `BertSelfAttention`.
        gradient_checkpointing: in training, keep only the block's inputs
            for the backward pass and recompute the rest there (one more
            forward pass of the block per step, for most of its activation
            memory). The same numbers as without: the dropout masks are
            drawn before the recomputed part, which makes them again from
            the same seeds. Not applied when attention scores are returned
            (`output_attentions=True`).

    Call args:
        x: `(batch, seq, hidden)`.
        padding_mask: `(batch, seq)`, nonzero at real tokens.
        return_attention_scores: also return `(batch, heads, seq, seq)`.
        query: optional `(batch, q_len, hidden)`, the input states of the
            positions whose outputs are wanted (e.g. `x[:, :1]` for [CLS]).
            They attend to every position of `x`; the attention output,
            residuals and feed-forward run on them alone, and the block
            returns `(batch, q_len, hidden)`: the same numbers as the full
            output at those positions, for a fraction of the work.
        packed: optional `PackedTokens` of `padding_mask`: `x` is then the
            real tokens' states `(tokens, hidden)`, and so is the output.
            Everything but attention runs on them alone; the dropout masks
            are the padded batch's at those tokens, so the numbers are the
            padded call's there. Not with `query`.
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.1,
        attention_dropout=0.1,
        layer_norm_epsilon=1e-12,
        initializer_range=0.02,
        use_fused_attention=True,
        gradient_checkpointing=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_fused_attention = use_fused_attention
        self.gradient_checkpointing = gradient_checkpointing

    def build(self, input_shape):
        hidden = input_shape[-1]
        if hidden % self.num_heads:
            raise ValueError(
                f"hidden_dim {hidden} is not divisible by num_heads {self.num_heads}"
            )
        init = keras.initializers.RandomNormal(stddev=self.initializer_range)
        policy = self.dtype_policy
        self.attention = BertSelfAttention(
            num_heads=self.num_heads,
            head_dim=hidden // self.num_heads,
            attention_dropout=self.attention_dropout,
            initializer_range=self.initializer_range,
            use_fused_attention=self.use_fused_attention,
            dtype=policy,
            name="attention",
        )
        self.attention_output = keras.layers.Dense(
            hidden, kernel_initializer=init, dtype=policy, name="attention_output"
        )
        self.attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="attention_layer_norm"
        )
        self.intermediate = keras.layers.Dense(
            self.intermediate_dim,
            activation=gelu,
            kernel_initializer=init,
            dtype=policy,
            name="intermediate",
        )
        self.output_dense = keras.layers.Dense(
            hidden, kernel_initializer=init, dtype=policy, name="output"
        )
        self.output_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="output_layer_norm"
        )
        self.dropout_layer = BertDropout(
            self.dropout, dtype=policy, name="dropout"
        )
        self.attention.build(input_shape)
        self.attention_output.build(tuple(input_shape[:-1]) + (hidden,))
        self.attention_layer_norm.build(input_shape)
        self.intermediate.build(input_shape)
        self.output_dense.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.output_layer_norm.build(input_shape)
        self.built = True

    def call(
        self,
        x,
        padding_mask=None,
        training=None,
        return_attention_scores=False,
        query=None,
        packed=None,
    ):
        if training and self.gradient_checkpointing and not return_attention_scores:
            return self._rematerialized(x, padding_mask, query, packed)
        return self._forward(x, padding_mask, training, return_attention_scores, query,
                             packed=packed)

    def compute_output_spec(self, x, padding_mask=None, training=None,
                            return_attention_scores=False, query=None, packed=None):
        """The output's shape and dtype from the inputs', without running
        the block: a functional model built from these blocks (every
        backbone) then never computes on symbolic tensors, which on PyTorch
        means the meta device, whose kernels load `torch._dynamo` (71 MB);
        and a variable's deferred initial value is never asked for there."""
        rows = x if query is None else query  # (batch, q_len, hidden)
        out = keras.KerasTensor(rows.shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return out
        probs_shape = (x.shape[0], self.num_heads, rows.shape[1], x.shape[1])
        return out, keras.KerasTensor(probs_shape, dtype="float32")

    def _rematerialized(self, x, padding_mask, query, packed):
        """The training forward pass under `keras.remat`. Its dropout seeds
        are drawn here, outside the recomputed function: recomputing then
        makes the same masks and leaves the generators alone (drawing inside
        would advance them twice, and on JAX leak the recomputation's values
        into the generators' state). Unseeded on PyTorch, masks come from
        torch's global generator, whose state `torch.utils.checkpoint`
        restores for the recomputation."""
        seeds = (
            _draw_seed(self.attention.dropout_layer),
            _draw_seed(self.dropout_layer),
            _draw_seed(self.dropout_layer),
        )

        def forward(x, *query):
            query = query[0] if query else None
            return self._forward(x, padding_mask, True, False, query, seeds, packed)

        # Tensors that need gradients are arguments (TensorFlow's
        # recompute_grad differentiates arguments and variables only).
        return keras.remat(forward)(x, *(() if query is None else (query,)))

    def _forward(
        self,
        x,
        padding_mask,
        training,
        return_attention_scores,
        query,
        seeds=(None, None, None),
        packed=None,
    ):
        attention_seed, attention_output_seed, output_seed = seeds
        attended = call_layer(
            self.attention,
            x,
            padding_mask=padding_mask,
            training=training,
            return_attention_scores=return_attention_scores,
            query=query,
            dropout_seed=attention_seed,
            **({} if packed is None else {"packed": packed}),
        )
        if return_attention_scores:
            attended, probs = attended
        residual = x if query is None else query
        h = self._dropout_add(residual, dense(self.attention_output, attended), training,
                              attention_output_seed, packed)
        x = layer_norm(self.attention_layer_norm, h)  # (batch, q_len, hidden)
        h = self._dropout_add(x, self._feed_forward(x, training), training, output_seed, packed)
        x = layer_norm(self.output_layer_norm, h)
        if return_attention_scores:
            return x, probs
        return x

    def _dropout_add(self, residual, h, training, seed, packed=None):
        """`residual + dropout(h)`; the plain sum for other dropout layers
        (bench/dropout_cost.py swaps in Keras'). Packed, the mask is the
        padded batch's at the real tokens (the generator advances as it
        would there)."""
        add_to = getattr(self.dropout_layer, "add_to", None)
        if add_to is None:
            return residual + call_layer(self.dropout_layer, h, training=training)
        if packed is not None and training and 0 < self.dropout_layer.rate < 1:
            keep, scale = self.dropout_layer.keep_mask_of_shape(
                (packed.batch, packed.seq, h.shape[-1]), like=h, drawn_seed=seed)
            return fused_kernels.dropout_add(residual, h, packed.pack(keep), scale)
        return add_to(residual, h, training=training, drawn_seed=seed)

    def _feed_forward(self, x, training):
        """output(intermediate(x)); in training through `feed_forward`, whose
        backward pass keeps the GELU's input and not its output too (not
        for quantized layers, whose kernels are not the weights)."""
        if (not training or getattr(self.intermediate, "quantization_mode", None)
                or getattr(self.output_dense, "quantization_mode", None)):
            return dense(self.output_dense, dense(self.intermediate, x))
        up, down = self.intermediate, self.output_dense
        weights = (weight(w, x.dtype) for w in (up.kernel, up.bias, down.kernel, down.bias))
        return feed_forward(x, *weights)  # (batch, q_len, hidden)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "initializer_range": self.initializer_range,
                "use_fused_attention": self.use_fused_attention,
                "gradient_checkpointing": self.gradient_checkpointing,
            }
        )
        return config


def _draw_seed(dropout_layer):
    """The seed of `dropout_layer`'s next mask, or None where it draws none
    (or is not a `BertDropout` and so draws its own)."""
    draw = getattr(dropout_layer, "draw_seed", None)
    if draw is not None and 0 < dropout_layer.rate < 1:
        return draw()
    return None
