"""The backbone's Dense, LayerNormalization and Embedding sublayers, called
the way eager PyTorch runs them fastest.

`keras.layers.Dense` computes `matmul(x, kernel)` and then adds the bias:
under XLA (JAX, TensorFlow with jit) the add fuses into the product, but
eager PyTorch runs it as a second kernel and a second pass over the output,
which in bf16 costs about as much as the product itself at BERT-mini's
width. `torch.addmm` adds the bias in the GEMM's epilogue (transformers'
`nn.Linear` does the same). And every Keras layer call costs about 70 us of
Python on PyTorch (input conversion, autocast and name scopes, argument
binding): several percent of a small model's forward pass, which XLA
traces once and never pays again. On PyTorch `dense` and `layer_norm` run
a built sublayer's own weights through the op directly (`embed` likewise
for the embedding tables); elsewhere they are the plain layer call.
`weight` reads a weight in the compute dtype; on PyTorch, outside autograd,
its mixed-precision cast is made once, not at every call. `call_layer` does
for any built layer what the others do for one kind: on PyTorch, with real
tensors, it runs the layer's `call` without `Layer.__call__` around it.
"""

import functools
import inspect

import keras
from keras import ops

from bertdesk.layers import fused_kernels, int8_kernels
from bertdesk.layers.lean_backward import gelu
from bertdesk.layers.packed_tokens import PackedTokens


def project(x, kernel, bias, activation=None):
    """`activation(x @ kernel + bias)` over the last axis of `x`; `kernel`
    and `bias` in `x`'s dtype. On PyTorch one `addmm`, and the exact GELU
    (`activation=gelu`) applied in place where autograd records nothing."""
    if keras.backend.backend() == "torch":
        out = fused_kernels.linear(x, kernel, bias, gelu=activation is gelu)
        return out if activation in (None, gelu) else activation(out)
    out = ops.matmul(x, kernel) + bias
    return out if activation is None else activation(out)


def dense(layer, x):
    """`layer(x)` for a built `keras.layers.Dense` with a bias, through
    `project`: the same numbers to rounding (in bf16 the product and the bias
    are rounded once, not twice). A layer Keras has quantized to int8 runs
    its integer product through oneDNN where `int8_kernels.applies` (Keras'
    numbers to rounding); other quantized layers, and layers without a
    bias, are simply called."""
    if keras.backend.backend() != "torch" or not layer.use_bias:
        return layer(x)
    activation = None if layer.activation is keras.activations.linear else layer.activation
    if getattr(layer, "quantization_mode", None):
        if not int8_kernels.applies(layer, x):
            return layer(x)
        out = int8_kernels.int8_dense(layer, x, gelu=activation is gelu)
        return out if activation in (None, gelu) else activation(out)
    dtype = layer.compute_dtype
    kernel = fused_kernels.product_kernel(layer.kernel, dtype)  # kept packed where it pays
    return project(fused_kernels.as_dtype(x, dtype), kernel,
                   fused_kernels.weight(layer.bias, dtype), activation=activation)


def weight(variable, dtype):
    """`ops.cast(variable, dtype)` for a product's weight; on PyTorch, in
    inference, the cast kept until the variable changes
    (`fused_kernels.weight`)."""
    if keras.backend.backend() == "torch":
        return fused_kernels.weight(variable, keras.backend.standardize_dtype(dtype))
    return ops.cast(variable, dtype)


def layer_norm(layer, x):
    """`layer(x)` for a built `keras.layers.LayerNormalization` over the last
    axis: on PyTorch the ATen call `keras.ops.layer_normalization` makes
    (float32 inside), the same numbers, without the layer call. Other axes
    and RMS scaling are simply called."""
    axes = layer.axis if isinstance(layer.axis, list) else [layer.axis]
    last = len(x.shape) - 1
    if keras.backend.backend() != "torch" or layer.rms_scaling or axes not in ([-1], [last]):
        return layer(x)
    gamma = layer.gamma if layer.scale else None
    beta = layer.beta if layer.center else None
    return fused_kernels.layer_norm(x, gamma, beta, layer.epsilon, layer.compute_dtype)


def embed(layer, ids):
    """`layer(ids)` for a built `keras.layers.Embedding`: on PyTorch the same
    lookup and cast without the layer call."""
    if keras.backend.backend() != "torch" or getattr(layer, "quantization_mode", None):
        return layer(ids)
    return fused_kernels.embedding(ids, layer.embeddings, layer.compute_dtype)


def reshape(x, shape):
    """`ops.reshape(x, shape)`; on PyTorch the tensor's own `reshape`, without
    the op's symbolic-input check (20 us a call against 1)."""
    if keras.backend.backend() == "torch" and not isinstance(x, keras.KerasTensor):
        return x.reshape(shape)
    return ops.reshape(x, shape)


def call_layer(layer, *args, training=None, **kwargs):
    """`layer(*args, **kwargs)`, with `training` passed where it is not None
    and the layer's `call` takes it.

    On PyTorch, for a built layer given real tensors, the layer's `call`
    runs directly, inside what `Layer.__call__` would have set up for it
    here: floating inputs cast to the layer's input dtype, the layer's
    autocast scope (mixed precision), and `training` (None stays None, as
    the call would resolve it: the layers read None as inference). Skipped:
    the rest of `__call__`'s bookkeeping (argument binding, name scopes,
    Keras masks, activity regularizers), about 100 us of Python a call
    (a BERT-mini encoder block's attention sublayer: 250 against 134 us at
    batch 1 x 8), which eager PyTorch pays at every call and XLA once.
    bertdesk's layers use no Keras masks and no activity regularizers. With
    symbolic inputs (building a functional model), on the other backends,
    for a layer not yet built, or one whose Keras call runs another method
    than `call` (quantized, rematerialized), it is the plain layer call.
    """
    if training is not None and _takes_training(type(layer)):
        kwargs["training"] = training
    if (keras.backend.backend() != "torch" or not layer.built or _calls_another_method(layer)
            or any(map(_is_symbolic, args)) or any(map(_is_symbolic, kwargs.values()))):
        return layer(*args, **kwargs)
    if getattr(layer, "_convert_input_args", True):
        convert = functools.partial(_convert_input, layer)
        args = tuple(map(convert, args))
        kwargs = {name: convert(value) for name, value in kwargs.items()}
    scope = _autocast_scope(layer)
    if scope is None:
        return layer.call(*args, **kwargs)
    with scope:
        return layer.call(*args, **kwargs)


def _calls_another_method(layer):
    """True where Keras' `Operation.__call__` would not run `call`: a layer
    Keras has quantized (`quantized_call`) or set to rematerialize
    (`keras.RematScope`)."""
    return (getattr(layer, "quantization_mode", None) is not None
            or getattr(layer, "_remat_mode", None) is not None)


@functools.cache
def _takes_training(layer_type):
    return "training" in inspect.signature(layer_type.call).parameters


def _is_symbolic(value):
    if isinstance(value, dict):
        return any(map(_is_symbolic, value.values()))
    return isinstance(value, keras.KerasTensor)


def _convert_input(layer, value):
    """What `Layer.__call__` does to each input: arrays to tensors, floating
    tensors cast to the layer's input dtype under autocast; ints untouched."""
    if isinstance(value, dict):
        return {name: _convert_input(layer, v) for name, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str, PackedTokens)):
        return value  # (what `convert_input` returns them as, without its checks)
    is_floating_point = getattr(value, "is_floating_point", None)  # a PyTorch tensor's
    if is_floating_point is not None and not is_floating_point():
        return value
    return layer.dtype_policy.convert_input(value, layer.autocast, layer.input_dtype)


def _autocast_scope(layer):
    """The autocast scope `Layer.__call__` enters around `layer.call` from
    the current one (Keras 3's rule), or None where it enters none."""
    from keras.src.backend import AutocastScope, get_autocast_scope

    current = get_autocast_scope()
    compute = layer.compute_dtype
    if current is not None:
        if not layer.autocast or not keras.backend.is_float_dtype(compute):
            return AutocastScope(None)
        return AutocastScope(compute) if current.dtype != compute else None
    if compute != layer.variable_dtype:
        return AutocastScope(compute)
    return None
