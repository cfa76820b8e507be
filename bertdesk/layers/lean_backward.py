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
    """
    if keras.backend.backend() == "torch":
        return fused_kernels.dropout_attention(q, k, v, keep, mask, scale, rescale)
    has_mask = mask is not None

    def forward(q, k, v, keep, *mask_arg):
        scores = ops.einsum("bqnd,bknd->bnqk", q * ops.cast(scale, q.dtype), k)
        scores = ops.cast(scores, "float32")
        if has_mask:
            scores = ops.where(mask_arg[0], scores, ops.cast(_NEG, "float32"))
        probs = ops.softmax(scores, axis=-1)  # (batch, heads, q_len, seq)
        weights = ops.where(keep, ops.cast(probs, v.dtype), ops.cast(0, v.dtype))
        out = ops.einsum("bnqk,bknd->bqnd", weights, v) * ops.cast(rescale, v.dtype)
        return out, (q, k, v, keep, probs)

    def backward(saved, g):
        q, k, v, keep, probs = saved
        zero = ops.cast(0, v.dtype)
        g = g * ops.cast(rescale, v.dtype)  # (b, q, n, d)
        weights = ops.where(keep, ops.cast(probs, v.dtype), zero)
        g_v = ops.einsum("bnqk,bqnd->bknd", weights, g)
        g_weights = ops.einsum("bqnd,bknd->bnqk", g, v)
        g_probs = ops.cast(ops.where(keep, g_weights, zero), "float32")
        g_scores = ops.cast(softmax_backward(g_probs, probs), q.dtype)
        s = ops.cast(scale, q.dtype)
        g_q = ops.einsum("bnqk,bknd->bqnd", g_scores, k) * s
        g_k = ops.einsum("bnqk,bqnd->bknd", g_scores, q) * s
        return (g_q, g_k, g_v, None) + (None,) * has_mask

    return with_gradient(forward, backward, q, k, v, keep, *((mask,) if has_mask else ()))


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
