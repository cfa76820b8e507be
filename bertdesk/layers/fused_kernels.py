"""Single-kernel versions of elementwise formulas, where a backend runs
`keras.ops` one op at a time.

The second backend-specific module under `bertdesk/layers` (the first is
`random_bits.py`), and why: under XLA (JAX, TensorFlow with jit) a chain of
elementwise `keras.ops` compiles into one loop, but PyTorch's eager mode runs
each op as its own kernel and its own pass over memory. The GELU derivative
that `lean_backward.gelu_matmul` needs is about ten such ops (erf, exp,
products, sums) over a `(tokens, 4 * hidden)` tensor; ATen has it as one
kernel, the one autograd itself uses for `gelu`; likewise the softmax's
gradient (four ops as a formula). Each function here gives
the same numbers as the formula it replaces (tests/test_lean_backward.py).
"""


def gelu_backward(upstream, x):
    """`upstream * gelu'(x)` for the exact (erf) GELU, on PyTorch tensors."""
    import torch

    return torch.ops.aten.gelu_backward(upstream.to(x.dtype), x, approximate="none")


def softmax_backward(upstream, probs):
    """`probs * (upstream - sum(upstream * probs, -1))`, on PyTorch tensors."""
    import torch

    return torch.ops.aten._softmax_backward_data(upstream, probs, -1, probs.dtype)
