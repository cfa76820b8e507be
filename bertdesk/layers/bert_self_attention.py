"""Multi-head self-attention with a padding mask and a fused QKV projection."""

import keras
from keras import ops

from bertdesk.layers import fused_kernels
from bertdesk.layers.bert_dropout import BertDropout
from bertdesk.layers.eager_calls import call_layer, dense, project, reshape, weight
from bertdesk.layers.lean_backward import dropout_attention


# === Layer ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertSelfAttention(keras.layers.Layer):
    """Bidirectional multi-head self-attention (BERT's `attention/self` block).

    Query, key and value come from one `(hidden, 3 * hidden)` projection (one
    matrix multiply instead of three). Scores are computed by the backend's
    fused `keras.ops.dot_product_attention` whenever attention probabilities
    are neither dropped out nor returned (on PyTorch with a CUDA GPU also
    when they are dropped out by an unseeded dropout: the fused kernel
    draws the mask); otherwise by an explicit softmax, which always runs in
    float32.

    Args:
        num_heads: number of attention heads.
        head_dim: width of each head (hidden_dim // num_heads in BERT).
        attention_dropout: dropout on the attention probabilities.
        initializer_range: std of the normal kernel initialiser.
        use_fused_attention: let the backend fuse score/softmax/value when it
            can. Set False to force the explicit path (used in tests).

    Call args:
        x: `(batch, seq, hidden)`.
        padding_mask: `(batch, seq)`, nonzero/True at real tokens.
        return_attention_scores: also return `(batch, heads, seq, seq)`
            attention probabilities.
        query: optional `(batch, q_len, hidden)`, the states of the positions
            whose outputs are wanted (e.g. `x[:, :1]`, the [CLS] token):
            queries are projected from it alone, keys and values from every
            position of `x`. Default: every position of `x`.
        dropout_seed: optional, a seed from `dropout_layer.draw_seed()` for
            the probabilities' dropout mask (see `BertDropout`).
        packed: optional `PackedTokens` of `padding_mask`: `x` is then the
            real tokens' states `(tokens, hidden)`, and so is the result.
            The projection runs on them alone; attention runs in the padded
            layout (zeros at the padding, whose keys the mask hides). Not
            with `query`.

    Returns:
        `(batch, q_len, num_heads * head_dim)`, the concatenated heads before
        the output projection (q_len = seq without `query`); and the
        probabilities when asked.
    """

    def __init__(
        self,
        num_heads,
        head_dim,
        attention_dropout=0.1,
        initializer_range=0.02,
        use_fused_attention=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.use_fused_attention = use_fused_attention

    def build(self, input_shape):
        hidden = input_shape[-1]
        self.qkv = keras.layers.Dense(
            3 * self.num_heads * self.head_dim,
            kernel_initializer=keras.initializers.RandomNormal(
                stddev=self.initializer_range
            ),
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv.build(tuple(input_shape[:-1]) + (hidden,))
        self.dropout_layer = BertDropout(
            self.attention_dropout, dtype=self.dtype_policy, name="dropout"
        )
        self.built = True

    def call(
        self,
        x,
        padding_mask=None,
        training=None,
        return_attention_scores=False,
        query=None,
        dropout_seed=None,
        packed=None,
    ):
        if packed is not None and query is not None:
            raise ValueError("BertSelfAttention: `packed` does not go with `query`")
        if packed is not None:
            batch, seq = packed.batch, packed.seq
        else:
            batch, seq = ops.shape(x)[0], ops.shape(x)[1]
        if (query is None and packed is None and keras.backend.backend() == "jax"
                and self.compute_dtype == "float32"
                and not getattr(self.qkv, "quantization_mode", None)):
            q_len = seq
            q, k, v = self._project_heads(x)
        elif query is None:
            q_len = seq
            qkv = dense(self.qkv, x)  # (batch, seq, 3 * heads * head_dim)
            if packed is not None:  # (tokens, ...) -> (batch, seq, ...), zeros at the padding
                qkv = packed.unpack(qkv)
            qkv = reshape(qkv, (batch, seq, 3, self.num_heads, self.head_dim))
            # One unstack, not three slices: on PyTorch each slice's gradient
            # is a zero-filled copy of the whole (batch, seq, 3, ...) tensor.
            q, k, v = ops.unstack(qkv, 3, axis=2)  # (batch, seq, heads, head_dim)
        else:
            q_len = ops.shape(query)[1]
            q, k, v = self._project_query_and_kv(query, x, batch, seq, q_len)
        out = self._attend(q, k, v, batch, q_len, seq, padding_mask, training,
                           return_attention_scores, dropout_seed)
        if packed is None:
            return out
        if return_attention_scores:
            return packed.pack(out[0]), out[1]
        return packed.pack(out)  # (tokens, heads * head_dim)

    def _attend(self, q, k, v, batch, q_len, seq, padding_mask, training,
                return_attention_scores, dropout_seed):
        """The heads' attention output `(batch, q_len, heads * head_dim)`
        from q `(batch, q_len, heads, head_dim)`, k and v `(batch, seq, ...)`;
        and the probabilities when asked."""
        mask = None
        if padding_mask is not None:
            # (batch, 1, 1, seq): every query attends to every real key.
            mask = ops.cast(padding_mask, "bool")[:, None, None, :]
        scale = 1.0 / float(self.head_dim) ** 0.5

        dropping = bool(training) and self.attention_dropout > 0
        if self.use_fused_attention and not dropping and not return_attention_scores:
            if keras.backend.backend() == "torch":  # without Keras' copies
                out = fused_kernels.attention(q, k, v, mask, scale)
            else:
                out = ops.dot_product_attention(q, k, v, mask=mask, scale=scale)
            return reshape(out, (batch, q_len, self.num_heads * self.head_dim))

        if (dropping and self.use_fused_attention and not return_attention_scores
                and keras.backend.backend() == "torch" and self._draws_from_torch(dropout_seed)
                and fused_kernels.fuses_attention_dropout(q)):
            # On a GPU: the dropout inside the fused kernel, no score-sized
            # tensor in memory (masks from torch's global generator).
            out = fused_kernels.attention_with_dropout(q, k, v, mask, scale,
                                                       self.attention_dropout)
            return reshape(out, (batch, q_len, self.num_heads * self.head_dim))

        keep_mask_of_shape = getattr(self.dropout_layer, "keep_mask_of_shape", None)
        if (dropping and self.attention_dropout < 1 and keep_mask_of_shape is not None
                and not return_attention_scores):
            # Training: a hand-written backward pass that keeps the
            # probabilities and the mask, not the dropped-out weights too.
            keep, rescale = keep_mask_of_shape(
                (batch, self.num_heads, q_len, seq), like=q, drawn_seed=dropout_seed
            )
            out = dropout_attention(q, k, v, keep, mask=mask, scale=scale, rescale=rescale)
            return reshape(out, (batch, q_len, self.num_heads * self.head_dim))

        # Explicit path. Every elementwise op on the (batch, heads, seq_q, seq_k)
        # scores is a pass over the largest tensors here (and, run eagerly,
        # a kernel of its own), so both scale factors go on smaller tensors:
        # 1/sqrt(head_dim) on the queries, the dropout's 1/(1 - rate) on the
        # output.
        scores = ops.einsum("bqnd,bknd->bnqk", q * ops.cast(scale, q.dtype), k)
        scores = ops.cast(scores, "float32")
        if mask is not None:
            scores = ops.where(mask, scores, ops.cast(-1e9, "float32"))
        probs = ops.softmax(scores, axis=-1)
        weights = ops.cast(probs, v.dtype)
        rescale = None
        keep_mask = getattr(self.dropout_layer, "keep_mask", None)  # BertDropout's
        if dropping and self.attention_dropout < 1 and keep_mask is not None:
            keep, rescale = keep_mask(weights, drawn_seed=dropout_seed)
            weights = ops.where(keep, weights, ops.cast(0, v.dtype))
        else:  # another dropout layer (bench/dropout_cost.py swaps in Keras')
            weights = call_layer(self.dropout_layer, weights, training=training)
        out = ops.einsum("bnqk,bknd->bqnd", weights, v)  # (batch, q_len, heads, head_dim)
        if rescale is not None:
            out = out * ops.cast(rescale, out.dtype)
        out = reshape(out, (batch, q_len, self.num_heads * self.head_dim))
        if return_attention_scores:
            return out, probs
        return out

    def _draws_from_torch(self, dropout_seed):
        """Whether this call's dropout mask would come from torch's global
        generator anyway: an unseeded `BertDropout` and no seed drawn ahead
        (a seeded layer keeps its own reproducible masks)."""
        layer = self.dropout_layer
        return dropout_seed is None and type(layer) is BertDropout and layer.seed is None

    def _project_heads(self, x):
        """q, k, v `(batch, seq, heads, head_dim)` from the fused kernel as
        one einsum over its `(hidden, 3, heads, head_dim)` view: the same
        numbers as `dense` then unstack. On JAX, XLA then lays each out as
        attention reads it and the kernel's gradient comes out in the
        kernel's layout; after a `(tokens, 3 * hidden)` product it copies
        three strided blocks out in the forward pass and concatenates their
        gradients in the backward one. A BERT-mini training step in float32,
        batch 16 x 128: 334-350 against 351-369 ms (six runs each), the
        forward pass the same. bfloat16 gains nothing (so it keeps the
        product), nor TensorFlow with XLA; without XLA it loses 15%."""
        heads, head_dim = self.num_heads, self.head_dim
        kernel = ops.reshape(ops.cast(self.qkv.kernel, x.dtype), (-1, 3, heads, head_dim))
        bias = ops.reshape(ops.cast(self.qkv.bias, x.dtype), (3, 1, 1, heads, head_dim))
        qkv = ops.einsum("bsh,hcnd->cbsnd", x, kernel) + bias  # (3, batch, seq, heads, head_dim)
        return qkv[0], qkv[1], qkv[2]

    def _project_query_and_kv(self, query, x, batch, seq, q_len):
        """q from `query`, k and v from `x`, through the two column blocks of
        the fused kernel (its columns are [q | k | v]). A quantized kernel
        (int8 values and scales, not the weights) goes through the layer:
        q from `query`'s rows, k and v from `x`'s (the inputs are quantized
        row by row, so each row's numbers are those of the whole-sequence
        call)."""
        width = self.num_heads * self.head_dim
        if getattr(self.qkv, "quantization_mode", None):
            q = dense(self.qkv, query)[..., :width]
            kv = dense(self.qkv, x)[..., width:]
        else:
            kernel = weight(self.qkv.kernel, x.dtype)
            bias = weight(self.qkv.bias, x.dtype)
            q = project(query, kernel[:, :width], bias[:width])
            kv = project(x, kernel[:, width:], bias[width:])
        q = reshape(q, (batch, q_len, self.num_heads, self.head_dim))
        kv = reshape(kv, (batch, seq, 2, self.num_heads, self.head_dim))
        k, v = ops.unstack(kv, 2, axis=2)
        return q, k, v

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "attention_dropout": self.attention_dropout,
                "initializer_range": self.initializer_range,
                "use_fused_attention": self.use_fused_attention,
            }
        )
        return config
