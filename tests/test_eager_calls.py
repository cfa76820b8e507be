"""The encoder's direct projections (`bertdesk.layers.projection`) and, on
PyTorch, the copy-free fused attention give what the Keras layers and ops
they stand in for give."""

import keras
import numpy as np
import pytest
from harness import to_np
from keras import ops
from test_layers import attention_model, encoder_model, hidden_inputs
from test_lean_backward import value_and_grads

from bertdesk.layers import cpu_products, fused_kernels
from bertdesk.layers.lean_backward import gelu
from bertdesk.layers.eager_calls import dense, embed, layer_norm, project, weight

IS_TORCH = keras.backend.backend() == "torch"


def _dense_layer(units, activation=None, dtype="float32", seed=0):
    layer = keras.layers.Dense(units, activation=activation, dtype=dtype,
                               bias_initializer=keras.initializers.RandomNormal(seed=seed))
    layer.build((None, 5, 12))
    return layer


@pytest.mark.parametrize("activation", [None, gelu])
def test_project_is_the_product_plus_the_bias(activation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 12)).astype("float32")
    kernel = rng.normal(size=(12, 7)).astype("float32")
    bias = rng.normal(size=(7,)).astype("float32")
    out = to_np(project(*(ops.convert_to_tensor(a) for a in (x, kernel, bias)),
                        activation=activation))
    expected = x @ kernel + bias
    if activation is gelu:
        expected = to_np(gelu(ops.convert_to_tensor(expected)))
    assert out.shape == (3, 5, 7)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", [None, "gelu_exact"])
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_dense_equals_the_layer_call(activation, dtype):
    layer = _dense_layer(9, activation=gelu if activation else None, dtype=dtype)
    x = ops.convert_to_tensor(np.random.default_rng(1).normal(size=(2, 5, 12)), "float32")
    ours, keras_call = dense(layer, x), layer(x)
    assert keras.backend.standardize_dtype(ours.dtype) == layer.compute_dtype
    if dtype == "float32":
        np.testing.assert_allclose(to_np(ours), to_np(keras_call), rtol=1e-5, atol=1e-5)
    else:  # Keras rounds the product to bf16, then the sum; addmm rounds once
        np.testing.assert_allclose(to_np(ours), to_np(keras_call), rtol=2e-2, atol=2e-2)


def test_project_gradients_equal_the_formulas():
    """Through autograd too, where the GELU must not run in place."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 12)).astype("float32")
    kernel = rng.normal(size=(12, 9)).astype("float32")
    bias = rng.normal(size=(9,)).astype("float32")
    upstream = ops.convert_to_tensor(rng.normal(size=(2, 5, 9)).astype("float32"))

    def projected(x, kernel, bias):
        return ops.sum(project(x, kernel, bias, activation=gelu) * upstream)

    def formula(x, kernel, bias):
        return ops.sum(gelu(ops.matmul(x, kernel) + bias) * upstream)

    value, grads = value_and_grads(projected, x, kernel, bias)
    ref_value, ref_grads = value_and_grads(formula, x, kernel, bias)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not IS_TORCH, reason="the in-place GELU is PyTorch's")
def test_in_place_gelu_only_without_autograd():
    import torch

    layer = _dense_layer(9, activation=gelu)
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        no_grad = dense(layer, x)
    with_grad = dense(layer, x.requires_grad_())
    assert with_grad.requires_grad and with_grad.grad_fn is not None
    np.testing.assert_array_equal(to_np(no_grad), to_np(with_grad.detach()))


def _fast_and_explicit(model, padded=True, **kwargs):
    """Inputs, and the layer built by `model` with the fused attention and
    with the explicit one, sharing weights."""
    x = hidden_inputs(seq=12)
    if not padded:
        x["padding_mask"] = np.ones_like(x["padding_mask"])
    fast = model(use_fused_attention=True, **kwargs)
    explicit = model(use_fused_attention=False, **kwargs)
    explicit.set_weights(fast.get_weights())
    return x, fast, explicit


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("model", [attention_model, encoder_model])
def test_inference_paths_match_the_explicit_attention(model, padded):
    """The whole layer with the fused attention against the explicit
    attention path (both through the same direct projections and LayerNorm,
    which `test_dense_equals_the_layer_call` and the LayerNorm tests hold
    to Keras' own layers): 1e-8 to 6e-8 apart on every backend; a scale of
    1/d instead of 1/sqrt(d), or q and k swapped, is 4e-5 to 6e-5 away."""
    x, fast, explicit = _fast_and_explicit(model, padded)
    a, b = to_np(fast(x)), to_np(explicit(x))
    mask = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(a[mask], b[mask], atol=2e-6)


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's attention kernel call")
def test_mask_is_dropped_only_when_it_keeps_every_key():
    import torch

    assert fused_kernels.keeps_every_key(None)
    assert fused_kernels.keeps_every_key(torch.ones(2, 1, 1, 6, dtype=torch.bool))
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    assert not fused_kernels.keeps_every_key(mask)
    q, k, v = (torch.randn(2, 6, 3, 4) for _ in range(3))
    masked = fused_kernels.attention(q, k, v, mask, 0.5)
    reference = ops.dot_product_attention(q, k, v, mask=mask, scale=0.5)
    np.testing.assert_allclose(to_np(masked), to_np(reference), atol=1e-6)
    unmasked = fused_kernels.attention(q, k, v, torch.ones_like(mask), 0.5)
    np.testing.assert_allclose(to_np(unmasked), to_np(ops.dot_product_attention(
        q, k, v, scale=0.5)), atol=1e-6)
    assert np.abs(to_np(masked[1]) - to_np(unmasked[1])).max() > 1e-3  # padding mattered


def _attention_reference(q, k, v, mask, scale):
    """softmax(q k^T scale, masked) v in float64 numpy, `(batch, q_len,
    heads, head_dim)` inputs."""
    q, k, v = (to_np(t).astype("float64") for t in (q, k, v))
    scores = np.einsum("bqnd,bknd->bnqk", q, k) * scale
    if mask is not None:
        scores = np.where(to_np(mask), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnqk,bknd->bqnd", probs, v)


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's attention kernel call")
@pytest.mark.parametrize("rows", [1, 2, 6, 1000])  # score matrices per product
@pytest.mark.parametrize("q_len", [4, 1])
@pytest.mark.parametrize("masking", ["none", "every key", "padding", "shared"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_on_the_cpu_is_the_formula(monkeypatch, rows, q_len, masking, dtype):
    """Batched products a few score matrices at a time: one head, two
    heads (blocks within a sequence, the last one shorter), two sequences
    (a shorter last group) and all 5 sequences, each sequence with its own
    padding; float32 to its rounding, bfloat16 within its rounding of the
    fused kernel's result."""
    import torch

    torch_dtype = getattr(torch, dtype)
    monkeypatch.setattr(fused_kernels, "SCORES_PER_GROUP",
                        rows * q_len * 6 * torch_dtype.itemsize)
    gen = torch.Generator().manual_seed(0)
    k, v = (torch.randn(5, 6, 3, 4, generator=gen).to(torch_dtype) for _ in range(2))
    q = (2 * torch.randn(5, q_len, 3, 4, generator=gen)).to(torch_dtype)
    v[1, 4:] = 1e3  # padded keys' values: any weight on them would show
    mask = None if masking == "none" else torch.ones(5, 1, 1, 6, dtype=torch.bool)
    if masking == "padding":
        mask[1, ..., 4:] = False
        mask[4, ..., 2:] = False
    elif masking == "shared":  # one (1, 1, 1, seq) mask for every sequence
        mask = mask[:1].clone()
        mask[..., 5:] = False
    out = fused_kernels.attention_on_cpu(q, k, v, mask, 0.5)
    assert out.dtype == torch_dtype and tuple(out.shape) == (5, q_len, 3, 4)
    assert out.is_contiguous()
    expected = _attention_reference(q, k, v, mask, 0.5)
    if masking == "padding":
        assert np.abs(expected[1]).max() < 50  # the reference keeps padding out too
    tol = 1e-5 if dtype == "float32" else 3e-2
    np.testing.assert_allclose(to_np(out.float()), expected, rtol=tol, atol=tol)
    fused = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        scale=0.5).transpose(1, 2)
    np.testing.assert_allclose(to_np(out.float()), to_np(fused.float()), rtol=tol, atol=tol)


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's attention kernel call")
@pytest.mark.parametrize("batch,q_len,seq", [(0, 4, 6), (2, 0, 6), (2, 4, 0)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_on_the_cpu_takes_empty_inputs(batch, q_len, seq, dtype):
    import torch

    q = torch.randn(batch, q_len, 3, 4).to(getattr(torch, dtype))
    k = torch.randn(batch, seq, 3, 4).to(getattr(torch, dtype))
    out = fused_kernels.attention_on_cpu(q, k, k, torch.ones(batch, 1, 1, seq).bool(), 0.5)
    assert tuple(out.shape) == (batch, q_len, 3, 4) and out.dtype == q.dtype
    if out.numel():  # no keys: nothing to attend to, zeros (not NaN)
        assert not out.isnan().any()


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's attention kernel call")
def test_on_the_cpu_inference_leaves_the_fused_kernel(monkeypatch):
    """PyTorch's fused kernel for float16, and for float32 with autograd
    recording or below `ONEDNN_ATTENTION_FROM` (query, key) pairs or where
    the batched products would not go to oneDNN; inference otherwise through
    `attention_on_cpu`; bfloat16 with autograd recording through
    `dropout_attention` without a mask."""
    import torch

    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention
    hand_written = fused_kernels.dropout_attention
    grouped = fused_kernels.attention_on_cpu

    def spy(q, *args, **kwargs):
        calls.append(("fused", q.dtype))
        return fused(q, *args, **kwargs)

    def spy_hand_written(q, k, v, keep, *args):
        calls.append(("hand-written", q.dtype, keep))
        return hand_written(q, k, v, keep, *args)

    def spy_grouped(q, *args):
        calls.append(("grouped", q.dtype))
        return grouped(q, *args)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(fused_kernels, "dropout_attention", spy_hand_written)
    monkeypatch.setattr(fused_kernels, "attention_on_cpu", spy_grouped)
    monkeypatch.setattr(fused_kernels, "ONEDNN_ATTENTION_FROM", 5 * 6)
    q, k = torch.randn(2, 5, 3, 4), torch.randn(2, 6, 3, 4)
    for onednn in (True, False):
        monkeypatch.setattr(cpu_products, "batched_products_use_onednn", lambda: onednn)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            fused_kernels.attention(q.to(dtype), k.to(dtype), k.to(dtype), None, 0.5)
    assert calls == [("grouped", torch.float32), ("grouped", torch.bfloat16),
                     ("fused", torch.float16), ("fused", torch.float32),
                     ("grouped", torch.bfloat16), ("fused", torch.float16)]
    calls.clear()
    monkeypatch.setattr(cpu_products, "batched_products_use_onednn", lambda: True)
    fused_kernels.attention(q, k[:, :5], k[:, :5], None, 0.5)  # 25 pairs
    assert calls == [("fused", torch.float32)]
    calls.clear()
    for dtype in (torch.float32, torch.bfloat16):
        leaf = q.to(dtype).detach().clone().requires_grad_()
        fused_kernels.attention(leaf, leaf, leaf, None, 0.5).float().sum().backward()
        assert leaf.grad is not None
    assert calls == [("fused", torch.float32), ("hand-written", torch.bfloat16, None)]


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's attention kernel call")
@pytest.mark.parametrize("q_len", [6, 2])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("path", ["attention", "dropout_attention without a mask"])
def test_attention_with_gradients_on_the_cpu_is_the_formula(q_len, dtype, path):
    """With autograd recording: the fused kernel (float32) and the
    hand-written forward and backward passes without dropout (bfloat16) give
    the formula's values and gradients (float64 autograd), padding included."""
    import torch

    gen = torch.Generator().manual_seed(3)
    q64 = torch.randn(2, q_len, 3, 4, generator=gen, dtype=torch.float64)
    k64, v64 = (torch.randn(2, 6, 3, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    upstream = torch.randn(2, q_len, 3, 4, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    ours = [t.to(getattr(torch, dtype)).requires_grad_() for t in (q64, k64, v64)]
    if path == "attention":
        out = fused_kernels.attention(*ours, mask, 0.5)
    else:
        out = fused_kernels.dropout_attention(*ours, None, mask, 0.5, 1.0)
    (out.double() * upstream).sum().backward()
    ref = [t.clone().requires_grad_() for t in (q64, k64, v64)]
    scores = torch.einsum("bqnd,bknd->bnqk", ref[0], ref[1]) * 0.5
    probs = torch.softmax(scores.masked_fill(~mask, -torch.inf), -1)
    expected = torch.einsum("bnqk,bknd->bqnd", probs, ref[2])
    (expected * upstream).sum().backward()
    tol = 1e-5 if dtype == "float32" else 5e-2
    np.testing.assert_allclose(to_np(out.double().detach()), to_np(expected.detach()),
                               rtol=tol, atol=tol)
    for got, want in zip(ours, ref):
        np.testing.assert_allclose(to_np(got.grad.double()), to_np(want.grad), rtol=tol, atol=tol)
    assert to_np(ours[1].grad)[1, 4:].max() == 0  # padded keys get no gradient


@pytest.mark.skipif(not IS_TORCH, reason="the bfloat16 attention path is PyTorch's")
@pytest.mark.parametrize("model", [attention_model, encoder_model])
def test_bf16_inference_matches_the_explicit_path(model, monkeypatch):
    """The mixed-precision layer through `attention_on_cpu` against the
    explicit attention path (einsums and Keras' softmax in bfloat16)."""
    import torch

    calls = []
    grouped = fused_kernels.attention_on_cpu
    monkeypatch.setattr(fused_kernels, "attention_on_cpu",
                        lambda *args: calls.append(1) or grouped(*args))
    x, fast, explicit = _fast_and_explicit(model, dtype="mixed_bfloat16")
    with torch.no_grad():  # as in predict
        a, b = to_np(fast(x)).astype("float32"), to_np(explicit(x)).astype("float32")
    assert calls == [1]
    mask = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(a[mask], b[mask], rtol=5e-2, atol=5e-2)
    assert np.abs(a[mask] - b[mask]).mean() < 1e-2


@pytest.mark.skipif(not IS_TORCH, reason="the grouped attention path is PyTorch's")
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("model", [attention_model, encoder_model])
def test_float32_inference_through_onednn_matches_the_explicit_path(model, padded, monkeypatch):
    """The float32 layer through `attention_on_cpu` (where this CPU's
    batched products go to oneDNN, else the fused kernel) against the
    explicit attention path, padded or not."""
    import torch

    calls = []
    grouped = fused_kernels.attention_on_cpu
    monkeypatch.setattr(fused_kernels, "attention_on_cpu",
                        lambda *args: calls.append(1) or grouped(*args))
    monkeypatch.setattr(fused_kernels, "ONEDNN_ATTENTION_FROM", 1)
    # oneDNN's batched products wherever it takes them in float32 on this
    # CPU, chosen by the speed measurement or not (else the fused kernel)
    onednn = cpu_products.batched_products_stay_float32()
    monkeypatch.setattr(cpu_products, "batched_products_use_onednn", lambda: onednn)
    x, fast, explicit = _fast_and_explicit(model, padded)
    with torch.no_grad():  # as in predict
        a, b = to_np(fast(x)), to_np(explicit(x))
    assert calls == ([1] if onednn else [])
    mask = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(a[mask], b[mask], atol=1e-5)


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's attention kernel call")
def test_attention_with_dropout_drops_inside_the_fused_kernel():
    import torch

    q, k, v = (torch.randn(2, 6, 3, 4, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    v[1, 4:] = 1e6  # padded keys' values: any weight on them would show
    plain = fused_kernels.attention(q, k, v, mask, 0.5)
    np.testing.assert_allclose(
        to_np(fused_kernels.attention_with_dropout(q, k, v, mask, 0.5, 0.0)), to_np(plain))
    torch.manual_seed(7)
    dropped = fused_kernels.attention_with_dropout(q, k, v, mask, 0.5, 0.3)
    torch.manual_seed(7)  # the masks follow torch's global generator
    again = fused_kernels.attention_with_dropout(q, k, v, mask, 0.5, 0.3)
    np.testing.assert_array_equal(to_np(dropped), to_np(again))
    assert np.abs(to_np(dropped) - to_np(plain)).max() > 1e-3
    assert np.abs(to_np(dropped[1])).max() < 1e3  # padding kept out
    # Inverted dropout: the mean over many masks is the plain attention.
    mean = sum(fused_kernels.attention_with_dropout(q, k, v, mask, 0.5, 0.3)
               for _ in range(4000)) / 4000
    np.testing.assert_allclose(to_np(mean), to_np(plain), atol=0.06)


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's attention kernel call")
def test_attention_dropout_goes_inside_the_kernel_only_where_torch_draws_the_mask(monkeypatch):
    from bertdesk.layers import BertDropout, BertSelfAttention

    calls = []
    original = fused_kernels.attention_with_dropout

    def spy(*args):
        calls.append(args[-1])
        return original(*args)

    monkeypatch.setattr(fused_kernels, "attention_with_dropout", spy)
    layer = BertSelfAttention(num_heads=2, head_dim=4, attention_dropout=0.2)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    mask = np.ones((2, 5), "int32")
    layer(x, padding_mask=mask, training=True)
    assert calls == []  # on the CPU: the hand-written dropout attention
    monkeypatch.setattr(fused_kernels, "fuses_attention_dropout", lambda q: True)  # "a GPU"
    out = layer(x, padding_mask=mask, training=True)
    assert calls == [0.2] and tuple(out.shape) == (2, 5, 8)
    layer(x, padding_mask=mask, training=True, dropout_seed=11)  # drawn ahead: its own mask
    layer(x, padding_mask=mask, training=True, return_attention_scores=True)
    layer(x, padding_mask=mask, training=False)
    assert calls == [0.2]
    # a seeded dropout keeps its own reproducible masks (set past Keras'
    # tracking, which locks a built layer)
    object.__setattr__(layer, "dropout_layer", BertDropout(0.2, seed=3))
    layer(x, padding_mask=mask, training=True)
    assert calls == [0.2]


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("center_scale", [(True, True), (False, True), (True, False)])
def test_layer_norm_equals_the_layer_call(dtype, center_scale):
    center, scale = center_scale
    layer = keras.layers.LayerNormalization(epsilon=1e-12, center=center, scale=scale,
                                            dtype=dtype,
                                            beta_initializer="random_normal",
                                            gamma_initializer="random_normal")
    layer.build((None, 5, 12))
    x = ops.convert_to_tensor(3 + 2 * np.random.default_rng(3).normal(size=(2, 5, 12)),
                              layer.compute_dtype)
    ours, keras_call = layer_norm(layer, x), layer(x)
    assert keras.backend.standardize_dtype(ours.dtype) == layer.compute_dtype
    np.testing.assert_array_equal(to_np(ours), to_np(keras_call))


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("ids_dtype", ["int32", "int64"])
def test_embed_equals_the_layer_call(dtype, ids_dtype):
    layer = keras.layers.Embedding(50, 6, dtype=dtype)
    layer.build((None,))
    ids = ops.convert_to_tensor(np.random.default_rng(4).integers(0, 50, (3, 7)), ids_dtype)
    ours, keras_call = embed(layer, ids), layer(ids)
    assert keras.backend.standardize_dtype(ours.dtype) == layer.compute_dtype
    np.testing.assert_array_equal(to_np(ours), to_np(keras_call))


class _EmbeddingInside(keras.layers.Layer):
    """A mixed-precision layer (its call runs in an autocast scope) that looks
    ids up in an Embedding sublayer, through `embed` or the layer's call."""

    def __init__(self, through_embed, **kwargs):
        super().__init__(dtype="mixed_bfloat16", **kwargs)
        self.through_embed = through_embed
        self.table = keras.layers.Embedding(50, 6, dtype="mixed_bfloat16")

    def build(self, ids_shape):
        self.table.build(ids_shape)

    def call(self, ids):
        return embed(self.table, ids) if self.through_embed else self.table(ids)


@pytest.mark.skipif(not IS_TORCH, reason="gradients through PyTorch's autograd")
def test_embed_inside_a_mixed_precision_layer_reads_the_float32_table():
    """Inside a bf16 layer's autocast scope `embed` looks rows up in the
    float32 table, as the Embedding layer's own call does, rather than in
    a bf16 copy of the whole table: the same outputs, and the table's
    gradient summed in float32 (a row looked up 400 times)."""
    import torch

    rng = np.random.default_rng(7)
    ids = rng.integers(0, 50, (4, 128))
    ids[:, :100] = 5
    upstream = torch.tensor(rng.normal(size=(4, 128, 6)), dtype=torch.bfloat16)
    results = []
    for through_embed in (True, False):
        layer = _EmbeddingInside(through_embed)
        layer.build(ids.shape)
        layer.table.embeddings.assign(rng.normal(size=(50, 6)).astype("float32")
                                      if not results else results[0][2])
        out = layer(ops.convert_to_tensor(ids, "int32"))
        (out * upstream).float().sum().backward()
        table = layer.table.embeddings.value
        results.append((to_np(ops.cast(out, "float32")), to_np(table.grad),
                        to_np(table.detach())))
    (out_embed, grad_embed, _), (out_layer, grad_layer, _) = results
    np.testing.assert_array_equal(out_embed, out_layer)
    assert grad_layer.dtype == np.float32
    np.testing.assert_allclose(grad_embed, grad_layer, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's linear")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_linear_transposed_is_the_tied_logits_formula(dtype):
    """The masked-LM head's logits on PyTorch (`float32(x @ table.T) + bias`
    as one `linear`) and their gradients are the einsum formula's, and the
    table's gradient comes out in the table's own layout."""
    import torch

    rng = np.random.default_rng(8)
    torch_dtype = getattr(torch, dtype)
    leaves = [torch.tensor(rng.normal(size=shape), dtype=torch.float32, requires_grad=True)
              for shape in [(3, 5, 12), (40, 12), (40,)]]
    upstream = torch.tensor(rng.normal(size=(3, 5, 40)), dtype=torch.float32)
    results = []
    for fast in (True, False):
        x, table = (t.to(torch_dtype) for t in leaves[:2])
        if fast:
            logits = fused_kernels.linear_transposed(x, table, leaves[2])
        else:
            logits = torch.einsum("bmh,vh->bmv", x, table).float() + leaves[2]
        assert logits.dtype == torch.float32
        grads = torch.autograd.grad((logits * upstream).sum(), [*leaves, table])
        results.append([logits.detach(), *grads])
    for ours, formula in zip(*results):
        torch.testing.assert_close(ours, formula, rtol=1e-5, atol=1e-5)
    assert results[0][-1].stride() == (12, 1)  # (vocab, hidden), not a transposed view
    assert results[1][-1].stride() != (12, 1)  # einsum's is


def test_dense_with_another_activation_equals_the_layer_call():
    layer = _dense_layer(4, activation="tanh")  # the pooler's
    x = ops.convert_to_tensor(np.random.default_rng(5).normal(size=(2, 5, 12)), "float32")
    np.testing.assert_allclose(to_np(dense(layer, x)), to_np(layer(x)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"rms_scaling": True}, {"axis": [1, 2]}])
def test_layer_norm_calls_the_layer_where_it_differs(kwargs):
    """RMS scaling and normalising over more than the last axis are the
    layer's own call."""
    layer = keras.layers.LayerNormalization(gamma_initializer="random_normal", **kwargs)
    layer.build((None, 5, 12))
    x = ops.convert_to_tensor(np.random.default_rng(6).normal(size=(2, 5, 12)), "float32")
    np.testing.assert_array_equal(to_np(layer_norm(layer, x)), to_np(layer(x)))


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's autograd Function")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_embedding_gradient_is_autograds_in_reused_storage(dtype):
    """The training lookup's gradient equals autograd's own (repeated ids
    included), is written into the previous step's storage once nothing
    holds that gradient, and into fresh storage while something does."""
    import torch
    from torch.nn import functional

    table = torch.nn.Parameter(torch.randn(300, 6))
    rng = np.random.default_rng(0)
    pointers = []
    for step in range(3):
        ids = torch.tensor(rng.integers(0, 300, (4, 7)), dtype=torch.int32)
        ids[0, :3] = 5  # a repeated row sums its gradients
        weights = torch.tensor(rng.normal(size=(4, 7, 6)), dtype=getattr(torch, dtype))
        (fused_kernels.embedding(ids, table, dtype) * weights).sum().backward()
        expected_table = table.detach().clone().requires_grad_()
        out = functional.embedding(ids.long(), expected_table).to(getattr(torch, dtype))
        (out * weights).sum().backward()
        torch.testing.assert_close(table.grad, expected_table.grad, rtol=1e-6, atol=1e-6)
        pointers.append(table.grad.data_ptr())
        table.grad = None  # as the training step does after the optimizer
    assert len(set(pointers)) == 1

    kept = []
    for _ in range(2):  # the caller keeps each gradient: nothing is overwritten
        fused_kernels.embedding(ids, table, dtype).sum().backward()
        kept.append(table.grad)
        table.grad = None
    assert kept[0].data_ptr() != kept[1].data_ptr()
    torch.testing.assert_close(kept[0], kept[1])

    for _ in range(2):  # two backward passes accumulate
        fused_kernels.embedding(ids, table, dtype).sum().backward()
    torch.testing.assert_close(table.grad, 2 * kept[0])

    with torch.no_grad():  # inference records nothing
        assert fused_kernels.embedding(ids, table, dtype).grad_fn is None


def test_weight_is_the_variable_cast():
    """`eager_calls.weight` gives what `ops.cast` gives, on every backend."""
    layer = _dense_layer(7, dtype="mixed_bfloat16")
    for dtype in ("bfloat16", "float32"):
        ours = weight(layer.kernel, dtype)
        assert keras.backend.standardize_dtype(ours.dtype) == dtype
        np.testing.assert_array_equal(to_np(ops.cast(ours, "float32")),
                                      to_np(ops.cast(ops.cast(layer.kernel, dtype), "float32")))


def _fresh_casts(monkeypatch):
    """Every kept cast made anew (what the model computed before the cache)."""
    def fresh(tensor, target, packed=False):
        cast = tensor.to(target)
        return cpu_products.pack(cast) if packed else cast

    monkeypatch.setattr(fused_kernels._CASTS, "get", fresh)


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's kept casts")
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "float32"])
def test_kept_casts_follow_every_change_of_the_weights(monkeypatch, policy):
    """Predictions with the kept weights (bf16 casts under mixed precision,
    packed float32 kernels, here every one of them, in float32) equal
    predictions with casts and packs made at every call: at first, after
    `assign`, after a training step's in-place update, and for the
    masked-LM head's tied table; a second inference read is the kept tensor
    itself."""
    import torch

    import bertdesk
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier
    from bertdesk.training.optimization import bert_adamw
    from conftest import TINY, random_batch

    monkeypatch.setattr(cpu_products, "FLOAT32_PACK_FROM", 0)
    compute = "bfloat16" if policy == "mixed_bfloat16" else "float32"
    if compute == "float32":  # float32 kernels are packed where oneDNN multiplies them
        if not cpu_products._has_linear_pointwise():
            pytest.skip("this PyTorch has no oneDNN")
        monkeypatch.setattr(cpu_products, "_decision", lambda: (True, None))
    keras.config.set_dtype_policy(policy)
    model = BertTextClassifier(bertdesk.BertBackbone(**TINY), num_classes=3)
    model.compile(optimizer=bert_adamw(1e-2, 10, warmup_ratio=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = random_batch()
    head = bertdesk.layers.BertMaskedLMHead(model.backbone.token_embedding)
    sequence = ops.convert_to_tensor(np.random.default_rng(0).normal(size=(3, 10, 16)),
                                     "bfloat16")

    def outputs():
        with torch.no_grad():
            return (model.predict_on_batch(x)["logits"], to_np(ops.cast(head(sequence), "float32")),
                    to_np(model.backbone(x)["sequence_output"]).astype("float32"))

    def check():
        kept = outputs()
        with monkeypatch.context() as m:
            _fresh_casts(m)
            fresh = outputs()
        for ours, expected in zip(kept, fresh):
            np.testing.assert_array_equal(ours, expected)
        return kept

    first = check()
    kernel = model.backbone.encoder_layers[0].intermediate.kernel
    with torch.no_grad():
        assert fused_kernels.weight(kernel, compute) is fused_kernels.weight(kernel, compute)
        packed = fused_kernels.product_kernel(kernel, compute)
        assert packed is fused_kernels.product_kernel(kernel, compute)
        assert packed.is_mkldnn == cpu_products.packs(kernel.value, getattr(torch, compute))
        assert packed.is_mkldnn or compute == "bfloat16"  # bf16: where the CPU has its kernels
    kernel.assign(to_np(kernel) * 2.0)
    table = model.backbone.token_embedding.embeddings
    table.assign(to_np(table) + 1.0)
    second = check()
    assert all(not np.array_equal(a, b) for a, b in zip(first, second))
    model.train_on_batch(x, np.array([0, 1, 2]))
    third = check()
    assert all(not np.array_equal(a, b) for a, b in zip(second, third))


@pytest.mark.skipif(not IS_TORCH, reason="PyTorch's kept casts")
def test_a_cast_read_by_autograd_is_in_the_graph_and_not_kept():
    """With autograd recording, the cast carries the gradient to the variable
    and drops the kept cast, which the coming update makes stale."""
    import torch

    layer = _dense_layer(7, dtype="mixed_bfloat16")
    with torch.no_grad():
        fused_kernels.weight(layer.kernel, "bfloat16")
    stored = layer.kernel.value
    assert fused_kernels._CASTS._kept.get(stored) is not None
    cast = fused_kernels.weight(layer.kernel, "bfloat16")
    assert cast.requires_grad and fused_kernels._CASTS._kept.get(stored) is None
    (grad,) = torch.autograd.grad(cast.float().sum(), [stored])
    np.testing.assert_array_equal(grad.numpy(), np.ones((12, 7), "float32"))
