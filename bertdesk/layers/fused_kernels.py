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
Also here: `autograd_apply`, `lean_backward.with_gradient` on PyTorch;
`attention`, PyTorch's fused attention kernel without Keras' copies, and
`attention_on_cpu`, inference attention on the CPU without it;
`dropout_attention` and `feed_forward`, `lean_backward`'s functions of
those names as ATen calls (the attention in cache-sized blocks of heads on
the CPU); `attention_with_dropout`, the probabilities'
dropout inside PyTorch's fused attention kernel on a GPU; `dropout_add`,
a residual connection and dropout in one kernel, and `dropout` without
it; `keep_mask`, `float_mask` and `mask_factor`, dropout masks made and
used without PyTorch's bool paths, which the CPU runs one element at a
time; `linear`, a projection with its bias inside the GEMM
(`eager_calls.py`); `linear_transposed`, the masked-LM head's tied logits;
`embedding`, the lookups (`eager_calls.embed`); and `weight`, a variable
in the compute dtype, its cast kept between inference calls. Their float32
products go through `cpu_products.py` (oneDNN where PyTorch's own GEMM is
slow on the CPU).
"""

import functools

from bertdesk.layers import cpu_products


def gelu_backward(upstream, x, overwrite=False):
    """`upstream * gelu'(x)` for the exact (erf) GELU, on PyTorch tensors.

    `overwrite`: the caller owns `upstream` (a product it just made) and
    lets the result go into it, where the dtypes and layout allow, instead
    of into one more `(tokens, intermediate)` buffer, one fewer live at the
    peak of the feed-forward's backward pass. Training steps at 16 x 128 on
    2 AMD Zen 3 cores, the two alternating in one process (medians): mini
    350.9 -> 336.4, 299.3 -> 295.9, 307.3 -> 307.1 ms; base 7.93 -> 7.38
    and 7.91 -> 7.74 s (within this machine's noise, no slower anywhere)."""
    import torch

    if overwrite and upstream.dtype == x.dtype and upstream.is_contiguous() \
            and upstream.shape == x.shape:
        return torch.ops.aten.gelu_backward.grad_input(upstream, x, approximate="none",
                                                       grad_input=upstream)
    return torch.ops.aten.gelu_backward(upstream.to(x.dtype), x, approximate="none")


def softmax_backward(upstream, probs):
    """`probs * (upstream - sum(upstream * probs, -1))`, on PyTorch tensors."""
    import torch

    return torch.ops.aten._softmax_backward_data(upstream, probs, -1, probs.dtype)


def dropout_add(x, h, keep, scale):
    """`x + where(keep, h * scale, 0)` in one pass (`torch.addcmul` with the
    mask as 0/1 floats), where the formula takes three (a product, a select,
    a sum). Its backward pass keeps the boolean mask, not the float one."""
    return _dropout_add_function().apply(x, h, keep, float(scale))


@functools.cache
def _dropout_add_function():
    import torch

    class DropoutAdd(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h, keep, scale):
            ctx.save_for_backward(keep)
            ctx.scale = scale
            return torch.addcmul(x, h, mask_factor(keep, h.dtype), value=scale)

        @staticmethod
        def backward(ctx, g):
            (keep,) = ctx.saved_tensors
            return g, float_mask(keep, g.dtype).mul_(g).mul_(ctx.scale), None, None

    return DropoutAdd


def dropout(x, keep, scale):
    """`where(keep, x * scale, 0)` on PyTorch tensors, the same numbers:
    without the two Python scalars Keras makes into tensors (on a GPU
    each is a copy from the host that waits for the device)."""
    return (x * mask_factor(keep, x.dtype)).mul_(scale)


def keep_mask(halves, threshold):
    """`halves >= threshold` as a boolean tensor, on PyTorch tensors: compared
    into uint8 and viewed as bool. On the CPU PyTorch writes a comparison's
    bool output one element at a time; into uint8 it vectorizes (a
    `(16, 4, 128, 128)` mask: 67 us against 311)."""
    import torch

    if torch.compiler.is_compiling() or halves.device.type == "meta":
        return halves >= threshold
    out = torch.empty(halves.shape, dtype=torch.uint8, device=halves.device)
    return torch.ge(halves, threshold, out=out).view(torch.bool)


def float_mask(keep, dtype):
    """A boolean mask as 0/1 in `dtype` (a torch dtype), through a uint8 view:
    on the CPU PyTorch casts bool to float one element at a time (337 us for
    a `(16, 4, 128, 128)` mask, against 55 from uint8), and so does every
    product of a float tensor with a bool one, which casts the mask first."""
    import torch

    if keep.dtype == torch.bool and not torch.compiler.is_compiling():
        keep = keep.view(torch.uint8)
    return keep.to(dtype)


def mask_factor(keep, dtype):
    """A boolean mask as a factor of products with `dtype` tensors, without
    a cast pass: its bytes (a uint8 view, which a product with a float
    tensor promotes inside its own kernel: one pass where `float_mask` then
    the product take two); 0/1 in `dtype` inside `torch.compile`, which
    cannot view bool storage as uint8."""
    import torch

    if keep.dtype == torch.bool and not torch.compiler.is_compiling():
        return keep.view(torch.uint8)
    return float_mask(keep, dtype)


def attention(q, k, v, mask, scale):
    """Attention without dropout, `keras.ops.dot_product_attention` on
    PyTorch tensors, minus its copies: PyTorch's fused kernel reads q, k
    and v `(batch, seq, heads, head_dim)` through head-major strided views
    (Keras makes a contiguous copy of each first), and the padding mask is left
    out when it keeps every key (as transformers does; checked on the CPU
    only, where it costs no device synchronisation). bfloat16 on the CPU
    leaves PyTorch's fused kernel, whose bfloat16 loops are slower than
    oneDNN's batched products: with autograd recording (training without
    attention dropout, attributions) through `dropout_attention` without a
    mask (forward and backward at BERT-base's shape, 16 x 128 with 12 heads,
    15.7 against 34.9 ms; a BERT-base classifier's bf16 training step
    without attention dropout 1,684 -> 1,429 ms, mini 105.7 -> 81.2), and
    without (prediction, evaluation) through `attention_on_cpu`. In
    float32 the same step lost 1-5% (mini 138.5 -> 146.0 ms), so float32
    training keeps the fused kernel; float32 inference goes through
    `attention_on_cpu` where the batched products go to oneDNN
    (`cpu_products.batched_products_use_onednn()`) and a head has at least
    `ONEDNN_ATTENTION_FROM` (query, key) pairs: whole forward passes at 16 x
    128 (alternating in one process) mini 40.2 -> 36.7 ms, MiniLM 134.3 ->
    114.1, BERT-base 857 -> 834; MiniLM at 16 x 256 259 -> 236, at 4 x 512
    175 -> 154."""
    import torch
    from torch.nn import functional

    if q.device.type == "cpu" and not torch.compiler.is_compiling():
        recording = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if q.dtype == torch.bfloat16:
            if recording:
                return dropout_attention(q, k, v, None, mask, scale, 1.0)
            return attention_on_cpu(q, k, v, mask, scale)
        if (q.dtype == torch.float32 and not recording
                and q.shape[1] * k.shape[1] >= ONEDNN_ATTENTION_FROM
                and cpu_products.batched_products_use_onednn()):
            return attention_on_cpu(q, k, v, mask, scale)
    out = functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=None if keeps_every_key(mask) else mask.bool(), scale=scale,
    )  # (batch, heads, q_len, head_dim)
    return out.transpose(1, 2)


def attention_on_cpu(q, k, v, mask, scale):
    """`attention` on the CPU without autograd, as two batched products
    around a softmax a few score matrices at a time (at most
    `SCORES_PER_GROUP` bytes of scores: whole sequences, or a sequence's
    heads in blocks), in buffers made once per call; `(batch, q_len, heads,
    head_dim)`, contiguous.

    PyTorch's fused CPU kernel multiplies its blocks through its own loops
    in bfloat16 and through MKL in float32 (half speed on AMD CPUs); the
    batched products here go to oneDNN (bfloat16 always, float32 inside
    `cpu_products.onednn_batched_products`). Per layer, 2 Zen 5 cores,
    against the fused kernel (float32, bfloat16): 16 x 128 with 12 heads
    of 64 (BERT-base) 4.3 against 6.5 ms, 2.9 against 7.3; 4 heads of 64
    (mini) 1.05 against 1.62, 0.96 against 2.48; 12 heads of 32 (MiniLM)
    2.6 against 4.1, 2.3 against 5.0; 4 x 512 with 12 heads of 64 12.0
    against 19.4, 8.1 against 20.2. Each group's head-major copies of q, k
    and v, its scores and probabilities stay in the cache, and the buffers
    are made once: made per group of 8 MB of scores (this function's bfloat16
    version before), MiniLM's bfloat16 forward pass at 16 x 128 faulted in
    18,240 fresh pages per call under glibc's defaults (89.7 ms; 67.4 now).
    The scores are in q's dtype (bfloat16 rounded, as in bertdesk's training
    path `dropout_attention` and its explicit einsum path; the fused kernel
    keeps them in float32), the softmax accumulates in float32."""
    import torch
    from torch.ops import aten

    batch, q_len, heads, head_dim = q.shape
    seq = k.shape[1]
    out = q.new_empty((batch, q_len, heads, head_dim))
    if out.numel() == 0:
        return out
    bias = None
    if not keeps_every_key(mask):  # (batch or 1, 1, 1 or q_len, seq)
        bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(
            ~mask.bool(), torch.finfo(q.dtype).min)
    # Rows (one head of one sequence each) per product: whole sequences when
    # one's scores fit in `SCORES_PER_GROUP`, else blocks of one sequence's heads.
    step = max(1, SCORES_PER_GROUP // max(1, q_len * seq * q.element_size()))
    group = max(1, min(batch, step // heads))
    step = min(step, group * heads)
    q_heads = q.new_empty((group, heads, q_len, head_dim))
    k_heads, v_heads = (t.new_empty((group, heads, seq, head_dim)) for t in (k, v))
    scores, probs = (q.new_empty((step, q_len, seq)) for _ in range(2))
    products = q.new_empty((group * heads, q_len, head_dim))
    with cpu_products.onednn_batched_products(q):
        for start in range(0, batch, group):
            stop = min(batch, start + group)
            n, rows = stop - start, (stop - start) * heads
            qh, kh, vh = (buffer[:n].copy_(t[start:stop].transpose(1, 2)).view(rows, -1, head_dim)
                          for buffer, t in ((q_heads, q), (k_heads, k), (v_heads, v)))
            sequence_bias = None if bias is None else (
                bias if bias.shape[0] == 1 else bias[start:stop])
            for first in range(0, rows, step):
                block = slice(first, min(rows, first + step))
                m = block.stop - first
                s = torch.baddbmm(scores[:m], qh[block], kh[block].transpose(1, 2),
                                  beta=0, alpha=scale, out=scores[:m])  # scale * q k^T
                if sequence_bias is not None:  # whole sequences, or part of one
                    (s.view(n, heads, q_len, seq) if m == rows else s).add_(
                        sequence_bias if m == rows else sequence_bias[0])
                # into another tensor: in place, PyTorch's softmax takes a slower path
                p = aten._softmax.out(s, -1, False, out=probs[:m])
                torch.bmm(p, vh[block], out=products[block])
            out[start:stop] = products[:rows].view(n, heads, q_len, head_dim).transpose(1, 2)
    return out


# The scores of one group in `attention_on_cpu`, in bytes. Whole forward
# passes (16 x 128, alternating in one process, glibc's defaults): 2 MB
# against 8 MB in bfloat16 MiniLM 67.4 against 89.1 ms (18,240 page faults
# a call with 8 MB), at 16 x 256 148.3 against 155.5; mini and BERT-base
# within 1.3%. Per layer in float32, 4 MB and 8 MB faulted in pages at some
# shapes (mini's heads 5.3-5.5 ms against 2.7).
SCORES_PER_GROUP = 2 << 20

# The fewest (query, key) pairs per head for which float32 inference
# attention leaves PyTorch's fused kernel for `attention_on_cpu`: MiniLM's
# forward pass at 16 x 32 and 16 x 64 tokens took the same time either way
# (27.3 and 57.0 ms), at 16 x 128 1.18x faster here.
ONEDNN_ATTENTION_FROM = 64 * 64


def attention_with_dropout(q, k, v, mask, scale, rate):
    """Attention with dropout on the probabilities inside PyTorch's fused
    `scaled_dot_product_attention` (flash or memory-efficient kernel on a
    CUDA GPU): no `(batch, heads, q_len, seq)` tensor is written to memory,
    forward or backward. The masks come from torch's global generator (its
    CUDA state), as an unseeded `BertDropout`'s do; `torch.utils.checkpoint`
    restores that state for a recomputed pass."""
    from torch.nn import functional

    out = functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=None if keeps_every_key(mask) else mask.bool(),
        dropout_p=float(rate), scale=scale,
    )  # (batch, heads, q_len, head_dim)
    return out.transpose(1, 2)


def fuses_attention_dropout(q):
    """Whether attention's dropout goes inside the fused kernel for `q`:
    on a CUDA device. Not on the CPU, where PyTorch's fused attention with
    dropout takes its plain path: forward and backward of a BERT-mini
    layer's attention (16 x 128, 4 heads of 64, a padding mask) 14.1 ms
    against `dropout_attention`'s 10.8 in float32 (its mask included),
    22.2 against 7.6 in bfloat16."""
    return q.device.type == "cuda"


def keeps_every_key(mask):
    """True when `mask` is None or, on the CPU outside `torch.compile`, all
    True: adding it to the scores would change nothing."""
    import torch

    if mask is None:
        return True
    if mask.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return bool(mask.all())


def as_dtype(value, dtype):
    """A tensor's or Keras variable's PyTorch value in `dtype` (a Keras dtype
    name), without `keras.ops.cast`'s Python work when it is already."""
    import torch

    value = _tensor(value)
    dtype = getattr(torch, dtype)
    return value if value.dtype == dtype else value.to(dtype)


def layer_norm(x, gamma, beta, epsilon, dtype):
    """`keras.ops.layer_normalization` over the last axis (in float32) cast
    to `dtype`, as one ATen call; gamma/beta may be None."""
    from torch.nn import functional

    gamma, beta = (None if w is None else as_dtype(w, "float32") for w in (gamma, beta))
    out = functional.layer_norm(as_dtype(x, "float32"), x.shape[-1:], gamma, beta, epsilon)
    return as_dtype(out, dtype)


def embedding(ids, table, dtype):
    """`keras.layers.Embedding`'s lookup (`take` rows, then cast to `dtype`)
    as one ATen call; in training, with the table's gradient written into
    storage kept from the previous backward pass (`_GradientStorage`)."""
    import torch
    from torch.nn import functional

    if ids.dtype not in (torch.int32, torch.int64):
        ids = ids.to(torch.int32)
    table = _stored_tensor(table)
    if table.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return as_dtype(_embedding_function().apply(ids, table), dtype)
    return as_dtype(functional.embedding(ids, table), dtype)


@functools.cache
def _embedding_function():
    import torch
    from torch.nn import functional

    class Embedding(torch.autograd.Function):
        @staticmethod
        def forward(ctx, ids, table):
            ctx.save_for_backward(ids)
            ctx.storage = _GradientStorage.of(table)
            return functional.embedding(ids, table)

        @staticmethod
        def backward(ctx, g):  # g: (*ids.shape, dim)
            (ids,) = ctx.saved_tensors
            grad = ctx.storage.zeros()
            grad.index_add_(0, ids.reshape(-1), g.reshape(-1, grad.shape[1]).to(grad.dtype))
            return None, grad

    return Embedding


class _GradientStorage:
    """Where an embedding table's dense gradient is written, kept from one
    backward pass to the next.

    Autograd's own embedding gradient is a fresh `zeros` of the table's
    size at every backward pass. A vocabulary table is the largest
    allocation of a fine-tuning step (47 MB for MiniLM, 94 MB for
    BERT-base), above glibc's 32 MB limit for reusing freed memory, so each
    fresh one is mapped from the kernel and faulted in page by page while
    it is zeroed (about 11,500 page faults per step for MiniLM). Here the storage
    of the last gradient is kept and zeroed again, but only when nothing
    else holds it (its reference count): a gradient that the optimizer has
    used and dropped is reused, while one that is still alive (accumulated
    into by a second `backward()`, or kept by the caller) is left alone and
    a fresh one is made. Where PyTorch does not expose the count
    (`torch._C._storage_Use_Count`, private), every gradient is fresh, as
    autograd makes it.
    """

    _by_table = {}  # id(table) -> _GradientStorage, dropped when the table is

    def __init__(self, table):
        self.shape, self.dtype, self.device = table.shape, table.dtype, table.device
        self.storage = None  # of the gradient last handed out

    @classmethod
    def of(cls, table):
        import weakref

        key = id(table)
        found = cls._by_table.get(key)
        if found is None or (found.shape, found.dtype, found.device) != (
                table.shape, table.dtype, table.device):
            found = cls._by_table[key] = cls(table)
            weakref.finalize(table, cls._by_table.pop, key, None)
        return found

    def zeros(self):
        import torch

        if self._only_held_here():
            grad = torch.empty(0, dtype=self.dtype, device=self.device)
            return grad.set_(self.storage, 0, self.shape).zero_()
        grad = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        self.storage = grad.untyped_storage()
        return grad

    def _only_held_here(self):
        import torch

        use_count = getattr(torch._C, "_storage_Use_Count", None)
        if self.storage is None or use_count is None:
            return False
        return use_count(self.storage._cdata) == 1


def weight(value, dtype, packable=False):
    """A Keras variable's value in `dtype` (a Keras dtype name) for a
    product; where autograd records nothing, the cast made once and kept
    until the variable changes (packed for oneDNN where `packable`: see
    `product_kernel`).

    Under mixed precision every product reads its float32 kernel cast to
    bf16, and Keras (like transformers under autocast) casts it again at
    every call: a pass over all of the model's weights per forward pass.
    Outside autograd (prediction, evaluation: `torch.no_grad`; frozen
    weights) the cast is kept with the variable's tensor (`_CASTS`) and made
    again only when the tensor's version counter moved, which in-place
    writes bump (`assign`, loading weights, Keras' optimizers; `BertAdamW`'s
    fused update bumps it by hand, as `torch._fused_adamw_` does not).
    BERT-base's bf16 forward pass at batch 16 x 128 on 2 cores: 261 against
    286 ms; the mini shape 21.8 and 19.9 against 22.6 and 20.9 ms (two
    runs); the price is a bf16 copy of the weights kept while they live
    (half their float32 size). A trainable weight read with autograd
    recording (training) is cast in the graph, and its kept cast dropped:
    the coming update makes it stale.
    """
    import torch

    tensor = _stored_tensor(value)
    target = getattr(torch, dtype)
    if torch.compiler.is_compiling():
        return tensor.to(target)
    if torch.is_grad_enabled() and tensor.requires_grad:
        _CASTS.drop(tensor)
        return tensor.to(target)
    packed = packable and not torch.is_grad_enabled() and cpu_products.packs(tensor, target)
    if tensor.dtype == target and not packed:
        return tensor
    return _CASTS.get(tensor, target, packed=packed)


def product_kernel(value, dtype):
    """`weight(value, dtype)` for a Dense kernel `(in, out)` that `linear`
    multiplies; where autograd records nothing at all (`torch.no_grad`,
    prediction and evaluation) and `cpu_products.packs` says so (a float32
    kernel read in bfloat16 on a CPU with oneDNN's bf16 kernels, or a large
    float32 kernel read in float32 where oneDNN takes those products), the
    kernel in `dtype` reordered into oneDNN's blocked layout
    (`cpu_products.pack`), made once and kept (in place of the plain bf16
    cast; beside a float32 kernel) until the variable changes or is read
    with autograd recording (a training step, which drops it).

    oneDNN's inner product reorders a plain weight into that layout at
    every call: a pass over the kernel each time. Kept packed, BERT-base's
    bf16 forward pass at batch 16 x 128 took 438 against 415 ms (2 AMD
    Zen 5 cores, kept memory, alternating in one process; (2048, 768) x
    (768, 3072) alone 10.3 against 9.4 ms), the same numbers bit for bit,
    and no more memory than the kept bf16 cast it replaces."""
    return weight(value, dtype, packable=True)


class _KeptCasts:
    """Casts of weight tensors (plain, or packed for oneDNN), each with the
    tensor's `_version` when it was made; held weakly by the tensor (an
    entry goes with its tensor)."""

    def __init__(self):
        self._kept = None  # WeakIdKeyDictionary, made when first needed

    def get(self, tensor, target, packed=False):
        if self._kept is None:
            from torch.utils.weak import WeakIdKeyDictionary

            self._kept = WeakIdKeyDictionary()
        kept = self._kept.setdefault(tensor, {})
        found = kept.get((target, packed))
        if found is not None and found[0] == tensor._version:
            return found[1]
        cast = tensor.detach().to(target)
        if packed:
            cast = cpu_products.pack(cast)
        kept.clear()  # an older version's, or the other kind (one kind in use at a time)
        kept[(target, packed)] = (tensor._version, cast)
        return cast

    def drop(self, tensor):
        if self._kept:
            self._kept.pop(tensor, None)


_CASTS = _KeptCasts()


def _tensor(value):
    """A Keras variable's PyTorch tensor (its `.value`), or the tensor given."""
    return getattr(value, "value", value)


def _stored_tensor(value):
    """`_tensor(value)` in the variable's own dtype: read outside the caller's
    autocast scope, as `keras.layers.Embedding`'s call reads its table.
    Inside a mixed-precision layer's call `.value` is the whole variable
    cast to the compute dtype: for a vocabulary table, a copy of 30522 rows
    made at every call (4.6 ms of a 31 ms bf16 BERT-mini forward pass) to
    look up a few hundred, and in training its gradient dense in bf16, then
    cast back."""
    import keras

    if not isinstance(value, keras.Variable):  # (hasattr would read .value)
        return value
    try:  # Keras' own (what `Layer.__call__` uses), not its public API
        from keras.src.backend import AutocastScope, get_autocast_scope
    except ImportError:
        return value.value
    if get_autocast_scope() is None:
        return value.value
    with AutocastScope(None):
        return value.value


def linear(x, kernel, bias, gelu=False):
    """`x @ kernel + bias` over the last axis as one product with the bias
    in the GEMM (`addmm`, or oneDNN's where `cpu_products` takes float32
    products there), then the exact GELU if asked: in place (`gelu_`, no
    second output buffer) where autograd does not record the result. Where
    autograd records nothing and oneDNN takes the product (bf16, and
    float32 where `cpu_products` chose it), the bias and the GELU are in
    its epilogue (`cpu_products.inference_linear`)."""
    import torch
    from torch.nn import functional

    rows = x.reshape(-1, x.shape[-1])  # (tokens, in)
    out = cpu_products.inference_linear(rows, kernel, bias, gelu=gelu)
    if out is None:
        out = cpu_products.linear(rows, kernel, bias)  # (tokens, out)
        if gelu:
            out = functional.gelu(out) if out.requires_grad else torch.ops.aten.gelu_(out)
    return out.view(*x.shape[:-1], out.shape[-1])


def linear_transposed(x, weight, bias):
    """`float32(x @ weight.T) + bias` over the last axis of `x`, `weight`
    `(out, in)` in `x`'s dtype and `bias` float32, as
    `torch.nn.functional.linear`: the gradient for `weight` comes out
    `(out, in)` and contiguous. In float32 the bias is added inside the
    GEMM; otherwise the product, rounded to `x`'s dtype, is widened and
    the bias added in place (a promoting `torch.add` of a bf16 and a
    float32 tensor takes longer than both: (320, 30522) logits, 5.2 ms
    against 3.3)."""
    import torch
    from torch.nn import functional

    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        rows = x.reshape(-1, x.shape[-1])
        out = cpu_products.linear(rows, weight, bias, weight_is_kernel=False)
        return out.view(*x.shape[:-1], out.shape[-1])
    return functional.linear(x, weight).float().add_(bias)


def autograd_apply(forward, backward, *args):
    """`forward(*args) -> (output, saved)` as a `torch.autograd.Function`
    whose backward is `backward(saved, upstream)`; `saved` goes through
    `ctx.save_for_backward`, so saved-tensor hooks (checkpointing) see it."""
    return _with_gradient_function().apply(forward, backward, *args)


@functools.cache
def _with_gradient_function():
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

    return WithGradient


def dropout_attention(q, k, v, keep, mask, scale, rescale):
    """`lean_backward.dropout_attention` on PyTorch tensors, forward and
    backward as direct ATen calls: batched products on head-major copies of
    q, k and v made once (einsum and matmul copy strided operands at every
    product), the score scale inside the GEMM, the padding mask added to
    the scores (not at all when it keeps every key), the dropout mask's
    bytes multiplied into the weights and their gradient. The same numbers
    as the `keras.ops` version to rounding, for about 0.8x its time per
    layer at the mini shape (eager PyTorch pays one Python `keras.ops`
    conversion per op; this pays none). `keep` None: no dropout (`attention`
    with gradients on the CPU).

    On the CPU the `(batch, heads, q_len, seq)` scores go through in blocks
    of heads (`attention_block_rows`): each block's products, softmax,
    dropout and their gradients run while the block is in the cache, and
    only the probabilities (kept for the backward pass) are written whole.
    Written whole, every one of those passes went to memory: at
    MiniLM's shape for question answering (16 x 256 tokens, 12 heads of
    32) forward and backward of a layer took 155.6-164.3 ms, 52.4-53.0 in
    blocks (2 AMD Zen 5 cores; 4 x 512 with 12 heads of 64: 170.8-177.5 ->
    72.2-74.1 ms, BERT-base at 16 x 128: 21.5-22.3 -> 18.9-19.2), and the
    step held three score-sized tensors at once where it now holds one.

    In float32 the blocks' products go through oneDNN where
    `cpu_products.batched_products_use_onednn()` (MKL's path is half as fast
    on AMD CPUs): the same layer, both ways alternating in one process,
    BERT-base's heads at 16 x 128 20.7 -> 11.8 ms, BERT-mini's 6.7 -> 3.6,
    MiniLM's at 16 x 256 57-60 -> 40-48, 4 x 512 with 12 heads of 64 78 ->
    48."""
    bias = None
    if not keeps_every_key(mask):  # (batch, 1, 1, seq) or broadcastable: 0 or -1e9
        bias = (~mask.bool()).float() * -1e9
    return _dropout_attention_function().apply(q, k, v, keep, bias, float(scale), float(rescale))


def attention_block_rows(q_len, seq, device):
    """How many `(q_len, seq)` score matrices (one head of one sequence
    each) `dropout_attention` takes at a time: about `SCORES_PER_BLOCK`
    bytes of float32 scores on the CPU (at least one matrix), all of them
    elsewhere (a GPU runs the whole batch at once)."""
    if device.type != "cpu":
        return None
    return max(1, SCORES_PER_BLOCK // max(1, 4 * q_len * seq))


# The float32 scores of one block of `dropout_attention`, in bytes. Forward
# and backward of one layer at 16 x 256 tokens with 12 heads of 32 (the
# whole batch's scores 48 MB: 155.6-164.3 ms), in float32 and bf16: blocks of
# 1 MB 56.8 and 46.6 ms, 2 MB 57.4 and 42.5, 4 MB 52.4-57.7 and 38.8-41.0,
# 8 MB 62.2 and 26.1, 16 MB 58.6 and 44.8; at 16 x 384 and 4 x 512 (12 heads
# of 64) 4 MB was within 6% of the best in float32 and bf16, 1 MB up to 1.4x
# and 16 MB up to 1.8x slower (2 AMD Zen 5 cores, 2 MB of L2 cache each,
# 32 MB of L3).
SCORES_PER_BLOCK = 4 << 20


@functools.cache
def _dropout_attention_function():
    import torch
    from torch.ops import aten

    def blocks(rows, step):  # step >= 1
        return (slice(start, min(rows, start + step)) for start in range(0, rows, step))

    class DropoutAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, keep, bias, scale, rescale):
            # q: (batch, q_len, heads, head_dim); k, v: (batch, seq, heads, head_dim).
            # Head-major copies, made once and kept: every product below is
            # then a plain batched GEMM (torch.matmul copies strided operands).
            q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
            batch, heads, q_len, head_dim = q.shape
            seq = k.shape[2]
            rows = batch * heads  # one (q_len, seq) score matrix each
            q, k, v = q.view(rows, q_len, -1), k.view(rows, seq, -1), v.view(rows, seq, -1)
            kept = keep  # saved as given: (batch, heads, q_len, seq)
            keep = _rows_of(keep, v.dtype, batch, heads, q_len, seq)
            if bias is not None:  # (rows, 1 or q_len, seq): a copy only of what broadcasts
                bias = bias.expand(batch, heads, -1, seq).reshape(rows, -1, seq)
            step = attention_block_rows(q_len, seq, q.device) or max(rows, 1)
            probs = q.new_empty((rows, q_len, seq), dtype=torch.float32)  # kept for backward
            out = q.new_empty((rows, q_len, head_dim))
            block_shape = (min(step, rows), q_len, seq)
            scores = q.new_empty(block_shape)  # in q's dtype
            # PyTorch's CPU softmax stays in its input's dtype: bf16 scores go to float32 first
            as_float = None if q.dtype == torch.float32 else probs.new_empty(block_shape)
            weights = None if keep is None and v.dtype == torch.float32 else (
                v.new_empty(block_shape))
            with cpu_products.onednn_batched_products(q):
                for block in blocks(rows, step):
                    n = block.stop - block.start
                    s = torch.baddbmm(scores[:n], q[block], k[block].transpose(1, 2),
                                      beta=0, alpha=scale, out=scores[:n])  # scale * q k^T
                    if as_float is not None:
                        s = (as_float[:n].copy_(s) if bias is None
                             else torch.add(s, bias[block], out=as_float[:n]))
                    elif bias is not None:
                        s = s.add_(bias[block])
                    # into another tensor: in place, PyTorch's softmax (forward and
                    # backward) takes a path 2-3x slower
                    p = aten._softmax.out(s, -1, False, out=probs[block])
                    w = p
                    if keep is not None:
                        w = torch.mul(p, keep[block], out=weights[:n])
                    elif weights is not None:
                        w = weights[:n].copy_(p)
                    torch.bmm(w, v[block], out=out[block])
            if rescale != 1.0:
                out = out.mul_(rescale)
            ctx.save_for_backward(q, k, v, kept, probs.view(batch, heads, q_len, seq))
            ctx.scale, ctx.rescale, ctx.step = scale, rescale, step
            return out.view(batch, heads, q_len, head_dim).transpose(1, 2)

        @staticmethod
        def backward(ctx, g):  # g: (batch, q_len, heads, head_dim)
            q, k, v, keep, probs = ctx.saved_tensors  # q, k, v: (rows, ..., head_dim)
            batch, heads, q_len, seq = probs.shape
            rows, head_dim = batch * heads, g.shape[3]
            probs = probs.view(rows, q_len, seq)
            keep = _rows_of(keep, v.dtype, batch, heads, q_len, seq)
            # head-major and contiguous in one pass (a product alone keeps
            # g's strides, and both products with it below would copy it)
            g = torch.mul(g.transpose(1, 2), ctx.rescale,
                          out=g.new_empty((batch, heads, q_len, head_dim))).view(rows, q_len, -1)
            g_q, g_k, g_v = (torch.empty_like(t) for t in (q, k, v))
            block_shape = (min(ctx.step, rows), q_len, seq)
            g_weights = v.new_empty(block_shape)  # in v's dtype, then float32
            g_scores = probs.new_empty(block_shape)  # float32
            as_float = None if v.dtype == torch.float32 else probs.new_empty(block_shape)
            weights = None if keep is None and as_float is None else v.new_empty(block_shape)
            with cpu_products.onednn_batched_products(v):
                for block in blocks(rows, ctx.step):
                    n = block.stop - block.start
                    p = probs[block]
                    g_w = torch.bmm(g[block], v[block].transpose(1, 2), out=g_weights[:n])
                    w = p
                    if keep is not None:
                        w = torch.mul(p, keep[block], out=weights[:n])
                        g_w = g_w.mul_(keep[block])
                    elif weights is not None:
                        w = weights[:n].copy_(p)
                    torch.bmm(w.transpose(1, 2), g[block], out=g_v[block])
                    g_w = g_w if as_float is None else as_float[:n].copy_(g_w)
                    g_s = aten._softmax_backward_data.out(g_w, p, -1, torch.float32,
                                                          grad_input=g_scores[:n])
                    if as_float is not None:  # the products in v's dtype
                        g_s = g_weights[:n].copy_(g_s)
                    torch.baddbmm(g_q[block], g_s, k[block], beta=0, alpha=ctx.scale,
                                  out=g_q[block])
                    torch.baddbmm(g_k[block], g_s.transpose(1, 2), q[block], beta=0,
                                  alpha=ctx.scale, out=g_k[block])

            def sequence_major(t, length):
                return t.view(batch, heads, length, head_dim).transpose(1, 2)

            return (sequence_major(g_q, q_len), sequence_major(g_k, seq),
                    sequence_major(g_v, seq), None, None, None, None)

    return DropoutAttention


def _rows_of(keep, dtype, batch, heads, q_len, seq):
    """A dropout keep mask as `(batch * heads, q_len, seq)` factors of
    `dtype` products (`mask_factor`: its bytes, no cast pass); None stays."""
    if keep is None:
        return None
    keep = mask_factor(keep, dtype).expand(batch, heads, q_len, seq)
    return keep.reshape(batch * heads, q_len, seq)


def feed_forward(x, up_kernel, up_bias, down_kernel, down_bias):
    """`lean_backward.feed_forward` on PyTorch tensors: both biases added
    inside their GEMMs (`addmm`), the backward pass written out (it keeps
    `x`, the GELU's input and the kernels, and recomputes the GELU); its
    six products through `cpu_products`."""
    return _feed_forward_function().apply(x, up_kernel, up_bias, down_kernel, down_bias)


@functools.cache
def _feed_forward_function():
    import torch
    from torch.nn import functional

    class FeedForward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, up_kernel, up_bias, down_kernel, down_bias):
            rows = x.reshape(-1, x.shape[-1])  # (tokens, hidden)
            z = cpu_products.addmm(up_bias, rows, up_kernel)  # (tokens, intermediate)
            out = cpu_products.addmm(down_bias, functional.gelu(z), down_kernel)
            ctx.save_for_backward(rows, up_kernel, z, down_kernel)
            ctx.x_shape = x.shape
            return out.view(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx, g):
            rows, up_kernel, z, down_kernel = ctx.saved_tensors
            g = g.reshape(-1, g.shape[-1])  # (tokens, hidden)
            mm, kernel_gradient = cpu_products.mm, cpu_products.kernel_gradient
            g_down = kernel_gradient(functional.gelu(z), g)
            g_z = gelu_backward(mm(g, down_kernel.t()), z, overwrite=True)
            g_up = kernel_gradient(rows, g_z)
            g_x = mm(g_z, up_kernel.t())
            return g_x.view(ctx.x_shape), g_up, g_z.sum(0), g_down, g.sum(0)

    return FeedForward
