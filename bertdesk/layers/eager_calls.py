"""The encoder's Dense and LayerNormalization sublayers, called the way
eager PyTorch runs them fastest.

`keras.layers.Dense` computes `matmul(x, kernel)` and then adds the bias:
under XLA (JAX, TensorFlow with jit) the add fuses into the product, but
eager PyTorch runs it as a second kernel and a second pass over the output,
which in bf16 costs about as much as the product itself at BERT-mini's
width. `torch.addmm` adds the bias in the GEMM's epilogue (transformers'
`nn.Linear` does the same). And every Keras layer call costs about 70 us of
Python on PyTorch (input conversion, autocast and name scopes, argument
binding): several percent of a small model's forward pass, which XLA
traces once and never pays again. On PyTorch `dense` and `layer_norm` run
a built sublayer's own weights through the op directly; elsewhere they are
the plain layer call.
"""

import keras
from keras import ops

from bertdesk.layers import fused_kernels
from bertdesk.layers.lean_backward import gelu


def project(x, kernel, bias, activation=None):
    """`activation(x @ kernel + bias)` over the last axis of `x`; `kernel`
    and `bias` in `x`'s dtype. On PyTorch one `addmm`, and the exact GELU
    (`activation=gelu`) applied in place where autograd records nothing."""
    if keras.backend.backend() == "torch" and activation in (None, gelu):
        return fused_kernels.linear(x, kernel, bias, gelu=activation is gelu)
    out = ops.matmul(x, kernel) + bias
    return out if activation is None else activation(out)


def dense(layer, x):
    """`layer(x)` for a built `keras.layers.Dense` with a bias, through
    `project`: the same numbers to rounding (in bf16 the product and the bias
    are rounded once, not twice). A layer Keras has quantized, or one without
    a bias, is simply called."""
    if (keras.backend.backend() != "torch" or not layer.use_bias
            or getattr(layer, "quantization_mode", None)):
        return layer(x)
    dtype = layer.compute_dtype
    activation = None if layer.activation is keras.activations.linear else layer.activation
    return project(ops.cast(x, dtype), ops.cast(layer.kernel, dtype),
                   ops.cast(layer.bias, dtype), activation=activation)


def layer_norm(layer, x):
    """`layer(x)` for a built `keras.layers.LayerNormalization` over the last
    axis: the same op (`keras.ops.layer_normalization`, float32 inside) and
    the same numbers, without the layer call on PyTorch."""
    if keras.backend.backend() != "torch" or layer.axis not in (-1, [-1], len(x.shape) - 1,
                                                                  [len(x.shape) - 1]):
        return layer(x)
    gamma = layer.gamma if layer.scale else None
    beta = layer.beta if layer.center else None
    out = ops.layer_normalization(x, gamma, beta, epsilon=layer.epsilon,
                                  rms_scaling=layer.rms_scaling)
    return ops.cast(out, layer.compute_dtype)
