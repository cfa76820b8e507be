"""Two training-time ops with hand-written gradients that keep less for the
backward pass than automatic differentiation does.

Autodiff keeps every intermediate that some gradient formula reads. Two of
BERT's are large and cheap to recompute:

- the dropped-out attention weights `where(keep, softmax(s), 0)`, a
  `(batch, heads, seq, seq)` tensor kept beside the probabilities it comes
  from (the product with the values needs it; the softmax needs the
  probabilities). `dropout_attention` keeps the probabilities and the
  boolean mask and rebuilds the weights in one elementwise pass;
- the GELU output of the feed-forward block, `(tokens, 4 * hidden)`, kept
  beside its input (the output projection's kernel gradient needs it; the
  GELU's own gradient needs the input). `gelu_matmul` keeps the input and
  recomputes the GELU.

On BERT-base at batch 16 x 128 on PyTorch, the tensors a training step
keeps for its backward pass go from 1.74 GB (parameters included) to about
1.34 GB. Step times stay within a few percent (0.95-1.02x on TensorFlow and
PyTorch) or drop (JAX, 1.08-1.16x faster); base peak memory is 0.87-0.96x
(README, `bench/lean_backward.py`). The forward numbers are the
same ops as the plain path; the gradients equal autodiff's to rounding
(tests/test_lean_backward.py, every backend).

Both name the tensors their backward pass keeps (`with_gradient`): a
`keras.ops.custom_gradient` on JAX and TensorFlow, an autograd Function
with `save_for_backward` on PyTorch, so that gradient checkpointing can drop
and recompute them there too.
"""

import math

import keras
from keras import ops

from bertdesk.layers import fused_kernels

_NEG = -1e9  # added to the scores of padded keys (as the plain path does)


def gelu(x):
    """Exact (erf) GELU, as in the reference checkpoints."""
    return keras.activations.gelu(x, approximate=False)


def gelu_derivative(x):
    """d/dx [x * Phi(x)] = Phi(x) + x * phi(x), in float32."""
    x = ops.cast(x, "float32")
    cdf = 0.5 * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = ops.exp(-0.5 * ops.square(x)) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + x * pdf


def gelu_backward(upstream, x):
    """`upstream * gelu'(x)` in `x.dtype` (computed in float32)."""
    if keras.backend.backend() == "torch":
        return fused_kernels.gelu_backward(upstream, x)
    g = ops.cast(upstream, "float32") * gelu_derivative(x)
    return ops.cast(g, x.dtype)


def softmax_backward(upstream, probs):
    """The gradient of the scores given that of `probs = softmax(scores)`
    (last axis): `probs * (upstream - sum(upstream * probs))`."""
    if keras.backend.backend() == "torch":
        return fused_kernels.softmax_backward(upstream, probs)
    return probs * (upstream - ops.sum(upstream * probs, axis=-1, keepdims=True))


# === Feed-forward ===
def gelu_matmul(z, kernel):
    """`gelu(z) @ kernel` for `z` `(..., f)` and `kernel` `(f, h)`, whose
    backward pass keeps `z` and `kernel` only (GELU recomputed)."""

    def forward(z, kernel):
        return ops.matmul(gelu(z), kernel), (z, kernel)

    def backward(saved, g):  # g: (..., h)
        z, kernel = saved
        f, h = ops.shape(kernel)[0], ops.shape(kernel)[1]
        a = ops.reshape(gelu(z), (-1, f))
        g_kernel = ops.matmul(ops.transpose(a), ops.reshape(g, (-1, h)))
        g_a = ops.matmul(g, ops.transpose(kernel))
        return gelu_backward(g_a, z), g_kernel

    return with_gradient(forward, backward, z, kernel)


def feed_forward(x, up_kernel, up_bias, down_kernel, down_bias):
    """BERT's feed-forward block in training,
    `gelu(x @ up_kernel + up_bias) @ down_kernel + down_bias`, through
    `gelu_matmul` (on PyTorch as one autograd Function of ATen calls, the
    biases inside the GEMMs).

    Args:
        x: `(..., hidden)`; up_kernel `(hidden, f)`, up_bias `(f,)`,
        down_kernel `(f, hidden)`, down_bias `(hidden,)`, all of x's dtype.
    """
    if keras.backend.backend() == "torch":
        return fused_kernels.feed_forward(x, up_kernel, up_bias, down_kernel, down_bias)
    z = ops.matmul(x, up_kernel) + up_bias
    return gelu_matmul(z, down_kernel) + down_bias


# === Attention ===
def dropout_attention(q, k, v, keep, mask=None, scale=1.0, rescale=1.0):
    """Attention with dropped-out probabilities:
    `(where(keep, softmax(q k^T * scale + mask), 0) @ v) * rescale`.

    Args:
        q: `(batch, q_len, heads, head_dim)`.
        k, v: `(batch, seq, heads, head_dim)`.
        keep: boolean `(batch, heads, q_len, seq)`, the dropout's keep mask.
        mask: optional boolean, broadcastable to `(batch, heads, q_len, seq)`:
            False at keys that may not be attended to.
        scale: multiplies the scores (1/sqrt(head_dim)); applied to `q`.
        rescale: multiplies the output (the dropout's 1/(1 - rate)).

    Returns:
        `(batch, q_len, heads, head_dim)`. The scores and softmax run in
        float32, the products in `v.dtype`, as on the plain path. The
        backward pass keeps the inputs and the float32 probabilities.

    On a CPU the scores go through in blocks of about `SCORES_PER_BLOCK`
    bytes that stay in the cache (PyTorch: blocks of heads,
    `fused_kernels.dropout_attention`; JAX: blocks of sequences,
    `_dropout_attention_in_blocks`). TensorFlow takes the whole batch:
    blocks (`tf.map_fn`) gained nothing there (forward and backward of one
    layer at 16 x 256 tokens with 12 heads of 32, 37.6 ms whole against
    39.8 in blocks, without XLA, on 2 AMD Zen 5 cores).
    """
    if keras.backend.backend() == "torch":
        return fused_kernels.dropout_attention(q, k, v, keep, mask, scale, rescale)
    per_block = _sequences_per_block(q, k)
    if per_block:
        return _dropout_attention_in_blocks(q, k, v, keep, mask, scale, rescale, per_block)
    has_mask = mask is not None

    def forward(q, k, v, keep, *mask_arg):
        out, saved = _attention_forward(q * ops.cast(scale, q.dtype), k, v, keep,
                                        mask_arg[0] if has_mask else None)
        return out * ops.cast(rescale, v.dtype), saved

    def backward(saved, g):
        g_q, g_k, g_v = _attention_backward(*saved, g * ops.cast(rescale, g.dtype))
        # q went in scaled: its gradient takes the scale on the way out
        return (g_q * ops.cast(scale, g_q.dtype), g_k, g_v, None) + (None,) * has_mask

    return with_gradient(forward, backward, q, k, v, keep, *((mask,) if has_mask else ()))


def _sequences_per_block(q, k):
    """How many sequences `dropout_attention` takes at a time on JAX's CPU:
    a divisor of the batch with at most `SCORES_PER_BLOCK` bytes of float32
    scores (at least one sequence); None (the whole batch at once) when that
    is all of them, on other backends, on a GPU and for shapes not known
    when traced."""
    if keras.backend.backend() != "jax" or not _on_cpu():
        return None
    (batch, q_len, heads, _), seq = q.shape, k.shape[1]
    if not all(isinstance(d, int) for d in (batch, q_len, heads, seq)):
        return None
    most = max(1, SCORES_PER_BLOCK // max(1, 4 * heads * q_len * seq))
    if most >= batch:
        return None
    return max(d for d in range(1, most + 1) if batch % d == 0)


# The float32 scores of one block of `dropout_attention` on JAX's CPU, in
# bytes (PyTorch's blocks, `fused_kernels.SCORES_PER_BLOCK`, are the same
# size). Forward and backward of one attention layer at 16 x 256 tokens with
# 12 heads of 32: 109.1-121.0 ms whole, 65.5-71.2 in blocks of 4 MB (one
# sequence); at BERT-base's 16 x 128 34.7-41.0 against 34.8-35.2 (blocks of
# four sequences); 2 AMD Zen 5 cores, 2 MB of L2 cache each, 32 MB of L3.
SCORES_PER_BLOCK = fused_kernels.SCORES_PER_BLOCK


def _on_cpu():
    return keras.distribution.list_devices()[0].lower().startswith("cpu")


def _dropout_attention_in_blocks(q, k, v, keep, mask, scale, rescale, per_block):
    """`dropout_attention` a few sequences at a time (`ops.map`, JAX's
    `lax.map`): each block's products, softmax, dropout and their gradients
    run while its scores are in the cache; only the probabilities, kept for
    the backward pass, are written whole. The same ops as the whole batch
    at once, on `(per_block, ...)` slices."""
    batch = q.shape[0]
    blocks = batch // per_block
    has_mask = mask is not None

    def in_blocks(t):  # (batch, ...) -> (blocks, per_block, ...); broadcasts a batch of 1
        t = ops.broadcast_to(t, (batch,) + tuple(t.shape[1:]))
        return ops.reshape(t, (blocks, per_block) + tuple(t.shape[1:]))

    def whole(t):
        return ops.reshape(t, (batch,) + tuple(t.shape[2:]))

    def forward(q, k, v, keep, *mask_arg):
        def block(args):
            out, saved = _attention_forward(*args[:4], args[4] if has_mask else None)
            return out, saved[-1]  # the probabilities

        parts = (in_blocks(q * ops.cast(scale, q.dtype)), in_blocks(k), in_blocks(v),
                 in_blocks(keep)) + tuple(in_blocks(m) for m in mask_arg)
        out, probs = ops.map(block, parts)
        return whole(out) * ops.cast(rescale, v.dtype), parts[:4] + (probs,)

    def backward(saved, g):
        def block(args):
            return _attention_backward(*args)

        g_q, g_k, g_v = ops.map(block, tuple(saved) + (in_blocks(g * ops.cast(rescale, g.dtype)),))
        # q went in scaled: its gradient takes the scale on the way out
        return (whole(g_q) * ops.cast(scale, q.dtype), whole(g_k), whole(g_v),
                None) + (None,) * has_mask

    return with_gradient(forward, backward, q, k, v, keep, *((mask,) if has_mask else ()))


def _attention_forward(q, k, v, keep, mask):
    """The dropped-out attention of q (already scaled), before the rescale:
    the output and what the backward pass keeps."""
    scores = ops.cast(ops.einsum("bqnd,bknd->bnqk", q, k), "float32")
    if mask is not None:
        scores = ops.where(mask, scores, ops.cast(_NEG, "float32"))
    probs = ops.softmax(scores, axis=-1)  # (batch, heads, q_len, seq)
    weights = ops.where(keep, ops.cast(probs, v.dtype), ops.cast(0, v.dtype))
    return ops.einsum("bnqk,bknd->bqnd", weights, v), (q, k, v, keep, probs)


def _attention_backward(q, k, v, keep, probs, g):
    """The gradients of `_attention_forward`'s q (the scaled one), k and v
    given the output's (rescaled) gradient `g`."""
    zero = ops.cast(0, v.dtype)
    weights = ops.where(keep, ops.cast(probs, v.dtype), zero)
    g_v = ops.einsum("bnqk,bqnd->bknd", weights, g)
    g_weights = ops.einsum("bqnd,bknd->bnqk", g, v)
    g_probs = ops.cast(ops.where(keep, g_weights, zero), "float32")
    g_scores = ops.cast(softmax_backward(g_probs, probs), q.dtype)
    g_q = ops.einsum("bnqk,bknd->bqnd", g_scores, k)
    g_k = ops.einsum("bnqk,bqnd->bknd", g_scores, q)
    return g_q, g_k, g_v


# === Custom gradients that name what they keep ===
def with_gradient(forward, backward, *args):
    """`forward(*args)[0]`, differentiated by `backward`.

    `forward(*args)` returns `(output, saved)`, `saved` a tuple of tensors;
    `backward(saved, upstream)` returns one gradient (or None) per argument.
    On JAX and TensorFlow this is `keras.ops.custom_gradient`. On PyTorch it
    is an autograd Function that keeps `saved` through `save_for_backward`;
    Keras' `custom_gradient` saves only the inputs that way and leaves the
    intermediates (the attention probabilities) in the gradient function's
    closure, out of reach of PyTorch's saved-tensor hooks, which gradient
    checkpointing (`torch.utils.checkpoint`) relies on to drop and recompute
    them.
    """
    if keras.backend.backend() == "torch":
        return fused_kernels.autograd_apply(forward, backward, *args)

    @ops.custom_gradient
    def apply(*args):
        out, saved = forward(*args)

        def grad(upstream):
            return backward(saved, upstream)

        return out, grad

    return apply(*args)


# === The same functions for autodiff (the reference in tests and bench) ===
def autodiff_gelu_matmul(z, kernel):
    """`gelu_matmul` without its backward pass: autodiff keeps both tensors."""
    return ops.matmul(gelu(z), kernel)


def autodiff_feed_forward(x, up_kernel, up_bias, down_kernel, down_bias):
    """`feed_forward` as plain ops, differentiated by the backend."""
    return ops.matmul(gelu(ops.matmul(x, up_kernel) + up_bias), down_kernel) + down_bias


def autodiff_dropout_attention(q, k, v, keep, mask=None, scale=1.0, rescale=1.0):
    """`dropout_attention` as plain ops, differentiated by the backend."""
    scores = ops.cast(ops.einsum("bqnd,bknd->bnqk", q * ops.cast(scale, q.dtype), k), "float32")
    if mask is not None:
        scores = ops.where(mask, scores, ops.cast(_NEG, "float32"))
    weights = ops.where(keep, ops.cast(ops.softmax(scores, axis=-1), v.dtype),
                        ops.cast(0, v.dtype))
    return ops.einsum("bnqk,bknd->bqnd", weights, v) * ops.cast(rescale, v.dtype)
