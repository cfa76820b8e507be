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
Also here: `autograd_apply`, `lean_backward.with_gradient` on PyTorch.
"""

_AUTOGRAD_FUNCTION = None


def gelu_backward(upstream, x):
    """`upstream * gelu'(x)` for the exact (erf) GELU, on PyTorch tensors."""
    import torch

    return torch.ops.aten.gelu_backward(upstream.to(x.dtype), x, approximate="none")


def softmax_backward(upstream, probs):
    """`probs * (upstream - sum(upstream * probs, -1))`, on PyTorch tensors."""
    import torch

    return torch.ops.aten._softmax_backward_data(upstream, probs, -1, probs.dtype)


def autograd_apply(forward, backward, *args):
    """`forward(*args) -> (output, saved)` as a `torch.autograd.Function`
    whose backward is `backward(saved, upstream)`; `saved` goes through
    `ctx.save_for_backward`, so saved-tensor hooks (checkpointing) see it."""
    global _AUTOGRAD_FUNCTION
    if _AUTOGRAD_FUNCTION is None:
        import torch

        class WithGradient(torch.autograd.Function):
            @staticmethod
            def forward(ctx, forward, backward, *args):
                out, saved = forward(*args)
                ctx.backward_fn = backward
                ctx.save_for_backward(*saved)
                return out

            @staticmethod
            def backward(ctx, upstream):
                return (None, None) + tuple(ctx.backward_fn(ctx.saved_tensors, upstream))

        _AUTOGRAD_FUNCTION = WithGradient
    return _AUTOGRAD_FUNCTION.apply(forward, backward, *args)
