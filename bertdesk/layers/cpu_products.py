"""Float32 matrix products on PyTorch's CPU through oneDNN where its own
GEMM is slow.

PyTorch's x86 wheels multiply float32 matrices with the MKL they bundle
(`torch.addmm`, `torch.mm`, `nn.functional.linear`), and MKL picks its
kernels by CPU vendor: on AMD CPUs with AVX-512 it runs a path about half
as fast as the hardware. Measured on 2 AMD Zen 5 cores (AVX-512), BERT-base
products of 2,048 tokens: (2048, 768) x (768, 768) 217 GFLOP/s through
`addmm` against 516 through oneDNN, (2048, 768) x (768, 3072) 222 against
467, a weight gradient (768, 2048) x (2048, 768) 212 against 343; the
machine's own float32 peak there is about 480 (TensorFlow's and XLA's
kernels, the same chip). oneDNN is the library PyTorch's bfloat16 products
already use; it dispatches by instruction set, not vendor. PyTorch itself
sends float32 products to it only when reduced precision is allowed
(`torch.backends.mkldnn.matmul.fp32_precision`); here the product stays
float32 (the same numbers to rounding).

`products_use_onednn()` decides once per process: the environment variable
`BERTDESK_TORCH_GEMM` (`auto`, `onednn` or `aten`), and by default (`auto`)
a measurement, the same (1024, 768) x (768, 768) product timed both ways
(about 0.1 s at the first product): oneDNN where it is at least 1.25x
faster. On 2 AMD EPYC Zen 3 cores (AVX2) it was slower than MKL, so ATen
keeps the product there and, expected, on Intel CPUs, where MKL's own
kernels are the fast ones.

`addmm` and `mm` are `torch.addmm`/`torch.mm` for code that writes its own
backward pass (`fused_kernels.feed_forward`); `linear` is an autograd-aware
projection of 2-D rows. Everything else, and every other dtype and device,
goes to ATen as before.
"""

import functools
import os
import time

ENV = "BERTDESK_TORCH_GEMM"
CHOICES = ("auto", "onednn", "aten")
_FASTER = 1.25  # how much faster oneDNN must measure to be used


def products_use_onednn():
    """Whether float32 CPU products go through oneDNN in this process (see
    the module's docstring); raises ValueError for an unknown
    `BERTDESK_TORCH_GEMM`."""
    return _decision()[0]


def probe_ratio():
    """ATen's time over oneDNN's for the probe product (None where it was
    not measured: forced by `BERTDESK_TORCH_GEMM`, or no oneDNN)."""
    return _decision()[1]


def setting():
    """`BERTDESK_TORCH_GEMM` as given (`auto` when unset); ValueError
    naming the variable for anything else than `auto`, `onednn`, `aten`."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(CHOICES)}")
    return value


@functools.cache
def _decision():
    chosen = setting()
    if chosen == "aten" or not _has_linear_pointwise():
        return False, None
    if chosen == "onednn":
        return True, None
    ratio = _measure()
    return ratio >= _FASTER, ratio


@functools.cache
def _has_linear_pointwise():
    import torch

    try:
        return torch.backends.mkldnn.is_available() and bool(
            torch.ops.mkldnn._linear_pointwise.default)
    except (AttributeError, RuntimeError):
        return False


def _measure(rows=1024, width=768, repeats=5):
    """ATen's best time over oneDNN's best for one projection, alternating
    the two so a slow moment of a shared machine hits both."""
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=generator)
    kernel = torch.randn(width, width, generator=generator)
    bias = torch.randn(width, generator=generator)
    with torch.no_grad():
        aten = lambda: torch.addmm(bias, x, kernel)  # noqa: E731
        onednn = lambda: _linear_pointwise(x, kernel.t(), bias)  # noqa: E731
        best = {aten: float("inf"), onednn: float("inf")}
        for f in (aten, onednn):  # warm-up: oneDNN builds its kernel at the first call
            f()
        for _ in range(repeats):
            for f in best:
                start = time.perf_counter()
                f()
                best[f] = min(best[f], time.perf_counter() - start)
    return best[aten] / best[onednn]


def _linear_pointwise(x, weight, bias):
    """`x @ weight.T + bias` (`weight` `(out, in)`; `bias` or None) through
    oneDNN's inner product. Both matrices row- or column-major: other
    strides are copied first (oneDNN takes a reference loop for them, and a
    broadcast gradient, stride 0, took 5.1 s for a (1024, 2048) x (2048,
    256) product)."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(_plain(x), _plain(weight), bias, "none", [], "")


def _plain(matrix):
    if matrix.is_contiguous() or matrix.t().is_contiguous():
        return matrix
    return matrix.contiguous()


def _applies(*tensors):
    import torch

    if not all(t.dtype == torch.float32 and t.device.type == "cpu" and t.numel()
               for t in tensors if t is not None):
        return False  # oneDNN makes no primitive for an empty matrix
    if torch.compiler.is_compiling():  # leave `torch.compile` its own lowering
        return False
    return products_use_onednn()


def addmm(bias, a, b):
    """`torch.addmm(bias, a, b)` (2-D `a @ b + bias`) outside autograd."""
    import torch

    if _applies(a, b, bias):
        return _linear_pointwise(a, b.t(), bias)
    return torch.addmm(bias, a, b)


def mm(a, b):
    """`torch.mm(a, b)` outside autograd."""
    import torch

    if _applies(a, b):
        return _linear_pointwise(a, b.t(), None)
    return torch.mm(a, b)


def kernel_gradient(rows, g):
    """`rows.T @ g` as a row-major matrix, outside autograd: the gradient of
    a kernel `(in, out)` from its layer's input rows `(tokens, in)` and
    upstream gradient `(tokens, out)` (or, arguments swapped, of an
    `(out, in)` weight). `rows` may be a function that makes them, for rows
    computed only for this product: then only oneDNN's copy of them is
    kept while it runs (the feed-forward block's GELU output, 25 MB at
    base, at the top of the backward pass where its memory peaks).

    Large gradients go through oneDNN's backward-weights primitive, which
    reduces over the tokens itself; it takes oneDNN's own tensors, so both
    inputs are copied into them and the result back. On the Zen 5 host at
    2,048 tokens: (768, 3072) 25.0 against 27.5 ms as an inner product of
    transposed matrices (`_linear_pointwise`), (3072, 768) 22.3 against
    27.7, (768, 2304) 16.7 against 18.6, but (768, 768) 8.2 against 6.8
    (the copies weigh more there), and BERT-mini's shapes about even: below
    `BACKWARD_WEIGHTS_MIN` elements the inner product stays. A BERT-base
    training step: 2,735 against 2,897 ms, alternating in one process.
    `torch.mm` (MKL's path, about 220 GFLOP/s) where oneDNN is not used."""
    import torch

    if callable(rows):
        rows = _onednn_copy_if_taken(rows(), g)
    if rows.is_mkldnn:
        onednn_rows = rows
    elif not _applies(rows, g):
        return torch.mm(rows.t(), g)
    elif rows.shape[1] * g.shape[1] < BACKWARD_WEIGHTS_MIN:
        return _linear_pointwise(rows.t(), g.t(), None)
    else:
        onednn_rows = rows.contiguous().to_mkldnn()
    # (grad_output, input): the result is (grad_output's columns, input's)
    out, _ = torch.ops.aten.mkldnn_linear_backward_weights(
        onednn_rows, g.contiguous().to_mkldnn(), _float32_marker(), False)
    return out.to_dense()


def _onednn_copy_if_taken(rows, g):
    """`rows` as oneDNN's tensor where `kernel_gradient` takes the
    backward-weights primitive for them (the dense one then goes when the
    caller lets it), else `rows` themselves."""
    if _applies(rows, g) and rows.shape[1] * g.shape[1] >= BACKWARD_WEIGHTS_MIN:
        return rows.contiguous().to_mkldnn()
    return rows


# Gradients of at least this many elements use oneDNN's backward-weights
# primitive (`kernel_gradient`): BERT-base's (768, 2304) and larger.
BACKWARD_WEIGHTS_MIN = 1 << 20


@functools.cache
def _float32_marker():
    """The weight argument of `mkldnn_linear_backward_weights`, read for its
    dtype only."""
    import torch

    return torch.empty(0, dtype=torch.float32)


def linear(rows, weight, bias, weight_is_kernel=True):
    """`rows @ kernel + bias` for 2-D `rows`, with autograd: `weight` is a
    Keras kernel `(in, out)` (`weight_is_kernel`) or a `(out, in)` matrix
    as `torch.nn.functional.linear` takes it (its gradient then comes out
    `(out, in)` and contiguous, likewise a kernel's `(in, out)`)."""
    import torch
    from torch.nn import functional

    if not _applies(rows, weight, bias):
        if weight_is_kernel:
            return torch.mm(rows, weight) if bias is None else torch.addmm(bias, rows, weight)
        return functional.linear(rows, weight, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (rows, weight, bias)):
        return _linear_function().apply(rows, weight, bias, weight_is_kernel)
    return _linear_pointwise(rows, weight.t() if weight_is_kernel else weight, bias)


@functools.cache
def _linear_function():
    import torch

    class OneDnnLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, rows, weight, bias, weight_is_kernel):
            ctx.save_for_backward(rows, weight)
            ctx.weight_is_kernel = weight_is_kernel
            return _linear_pointwise(rows, weight.t() if weight_is_kernel else weight, bias)

        @staticmethod
        def backward(ctx, g):  # g: (tokens, out)
            rows, weight = ctx.saved_tensors
            g = g.contiguous()  # used both ways round below
            kernel_layout = ctx.weight_is_kernel
            g_rows = g_weight = g_bias = None
            if ctx.needs_input_grad[0]:  # g @ kernel.T
                g_rows = _linear_pointwise(g, weight if kernel_layout else weight.t(), None)
            if ctx.needs_input_grad[1]:  # rows.T @ g as (in, out), or g.T @ rows as (out, in)
                g_weight = kernel_gradient(rows, g) if kernel_layout else kernel_gradient(g, rows)
            if ctx.needs_input_grad[2]:  # False without a bias
                g_bias = g.sum(0)
            return g_rows, g_weight, g_bias, None

    return OneDnnLinear
