"""The hand-written backward passes of `bertdesk.layers.lean_backward` give
autodiff's gradients, on their own and inside a training step."""

import keras
import numpy as np
import pytest
from conftest import TINY, random_batch
from harness import assert_same_updates, rng_restore, rng_snapshot, to_np
from keras import ops

from bertdesk.layers import bert_encoder_block, bert_self_attention
from bertdesk.layers.lean_backward import (autodiff_dropout_attention, autodiff_feed_forward,
                                          autodiff_gelu_matmul, dropout_attention,
                                          feed_forward, gelu, gelu_derivative, gelu_matmul)


def value_and_grads(fn, *arrays):
    """fn(*tensors) -> scalar, and its gradient with respect to each array,
    by the backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(arrays))))(
            *[jax.numpy.asarray(a) for a in arrays])
    elif backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            value = fn(*xs)
        grads = tape.gradient(value, xs)
    else:
        import torch

        xs = [torch.tensor(a, requires_grad=True) for a in arrays]
        value = fn(*xs)
        value.backward()
        value, grads = value.detach(), [x.grad for x in xs]
    return to_np(value), [to_np(g).astype("float32") for g in grads]


def _attention_case(q_len, seq=9, batch=3, heads=2, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, q_len, heads, dim)).astype("float32")
    k, v = (rng.normal(size=(batch, seq, heads, dim)).astype("float32") for _ in range(2))
    keep = rng.random((batch, heads, q_len, seq)) > 0.3
    mask = np.ones((batch, 1, 1, seq), bool)
    mask[1, ..., 6:] = False  # padded keys
    mask[2, ..., 3:] = False
    upstream = rng.normal(size=(batch, q_len, heads, dim)).astype("float32")
    return q, k, v, keep, mask, upstream


@pytest.mark.parametrize("q_len", [9, 2])
@pytest.mark.parametrize("masked", [True, False])
def test_dropout_attention_matches_autodiff(q_len, masked):
    q, k, v, keep, mask, upstream = _attention_case(q_len)
    mask = mask if masked else None
    results = []
    for attend in (dropout_attention, autodiff_dropout_attention):
        def loss(q, k, v, attend=attend):
            out = attend(q, k, v, ops.convert_to_tensor(keep),
                         None if mask is None else ops.convert_to_tensor(mask),
                         scale=0.5, rescale=1 / 0.7)
            return ops.sum(out * ops.convert_to_tensor(upstream))

        results.append(value_and_grads(loss, q, k, v))
    (value, grads), (plain_value, plain_grads) = results
    np.testing.assert_allclose(value, plain_value, rtol=1e-5)
    for name, g, p in zip("qkv", grads, plain_grads):
        assert np.abs(p).max() > 0.1, name
        np.testing.assert_allclose(g, p, atol=1e-5, err_msg=f"gradient of {name}")
    if masked:  # padded keys get no gradient
        assert np.all(grads[1][1, 6:] == 0) and np.all(grads[2][2, 3:] == 0)


def test_dropout_attention_in_bfloat16():
    q, k, v, keep, mask, upstream = _attention_case(9)
    results = []
    for attend in (dropout_attention, autodiff_dropout_attention):
        def loss(q, k, v, attend=attend):
            cast = [ops.cast(t, "bfloat16") for t in (q, k, v)]
            out = attend(*cast, ops.convert_to_tensor(keep), ops.convert_to_tensor(mask),
                         scale=0.5, rescale=1 / 0.7)
            assert ops.dtype(out) == "bfloat16"
            return ops.sum(ops.cast(out, "float32") * ops.convert_to_tensor(upstream))

        results.append(value_and_grads(loss, q, k, v))
    (value, grads), (plain_value, plain_grads) = results
    # bfloat16's roundings: the loss 1.3% apart on PyTorch (its products'
    # rounding differs), gradients 8.8e-3 of up to 6.75; equal elsewhere
    np.testing.assert_allclose(value, plain_value, rtol=0.03)
    for g, p in zip(grads, plain_grads):
        np.testing.assert_allclose(g, p, atol=0.02, rtol=0.02)


@pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                    reason="TensorFlow takes the whole batch at once")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("dropout", [True, False])
@pytest.mark.parametrize("block_matrices", [1, 3, 4])
def test_attention_in_blocks_gives_the_whole_batch_numbers(monkeypatch, dtype, masked, dropout,
                                                            block_matrices):
    """On a CPU `dropout_attention` goes through the scores a block at a
    time: on PyTorch a few heads (the 8 score matrices of a 4 x 2-head batch
    in blocks of 1, of 3 + 3 + 2 and of 4), on JAX a few sequences (blocks
    of 1, 1 and 2). Each gives the numbers of one block holding them all,
    forward and every gradient, with and without the padding mask and the
    dropout mask."""
    from bertdesk.layers import fused_kernels, lean_backward

    q, k, v, keep, mask, upstream = _attention_case(9, batch=4)
    torch_backend = keras.backend.backend() == "torch"
    if not dropout:  # PyTorch's kernel takes None; the keras.ops one a mask keeping all
        keep = None if torch_backend else np.ones_like(keep)

    def run(block_bytes):
        monkeypatch.setattr(fused_kernels, "SCORES_PER_BLOCK", block_bytes)
        monkeypatch.setattr(lean_backward, "SCORES_PER_BLOCK", block_bytes)

        def loss(q, k, v):
            cast = [ops.cast(t, dtype) for t in (q, k, v)]
            out = dropout_attention(*cast, None if keep is None else ops.convert_to_tensor(keep),
                                    ops.convert_to_tensor(mask) if masked else None, scale=0.5,
                                    rescale=1 / 0.7 if dropout else 1.0)
            assert ops.dtype(out) == dtype
            return ops.sum(ops.cast(out, "float32") * ops.convert_to_tensor(upstream))

        value, grads = value_and_grads(loss, q, k, v)
        if torch_backend:
            import torch

            block = fused_kernels.attention_block_rows(9, 9, torch.device("cpu"))
        else:
            block = lean_backward._sequences_per_block(ops.convert_to_tensor(q),
                                                      ops.convert_to_tensor(k))
        return value, grads, block

    whole_value, whole, whole_rows = run(1 << 30)
    value, blocks, block = run(block_matrices * 4 * 9 * 9)
    assert whole_rows is None or whole_rows >= 8
    assert block == (block_matrices if torch_backend else {1: 1, 3: 1, 4: 2}[block_matrices])
    np.testing.assert_allclose(value, whole_value, rtol=1e-5)
    for name, b, w in zip("qkv", blocks, whole):
        assert np.abs(w).max() > 0.1, name
        np.testing.assert_allclose(b, w, atol=1e-6, rtol=1e-6, err_msg=f"gradient of {name}")
    if masked:  # padded keys get no gradient
        assert np.all(blocks[1][1, 6:] == 0) and np.all(blocks[2][2, 3:] == 0)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's blocks of sequences")
def test_blocks_of_sequences_need_the_shapes():
    """JAX's blocks are whole sequences, a divisor of the batch: one
    sequence of 16 x 256 tokens with 12 heads has 3 MB of scores (one per
    4 MB block), at 128 tokens four fit; a batch not known yet (Keras'
    symbolic shapes) takes the whole batch."""
    from bertdesk.layers import lean_backward

    def blocks(batch, seq):
        q = keras.KerasTensor((batch, seq, 12, 32))
        return lean_backward._sequences_per_block(q, q)

    assert blocks(16, 256) == 1
    assert blocks(16, 128) == 4
    assert blocks(14, 128) == 2  # the largest divisor of 14 up to 5
    assert blocks(4, 128) is None  # one block holds them all
    assert blocks(None, 256) is None


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-5), ("bfloat16", 0.03)])
def test_gelu_matmul_matches_autodiff(dtype, atol):
    rng = np.random.default_rng(1)
    z = (2 * rng.normal(size=(3, 5, 8))).astype("float32")
    kernel = rng.normal(size=(8, 6)).astype("float32")
    upstream = rng.normal(size=(3, 5, 6)).astype("float32")
    results = []
    for fn in (gelu_matmul, autodiff_gelu_matmul):
        def loss(z, kernel, fn=fn):
            out = fn(ops.cast(z, dtype), ops.cast(kernel, dtype))
            return ops.sum(ops.cast(out, "float32") * ops.convert_to_tensor(upstream))

        results.append(value_and_grads(loss, z, kernel))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for g, p in zip(results[0][1], results[1][1]):
        assert np.abs(p).max() > 0.1
        np.testing.assert_allclose(g, p, atol=atol, rtol=atol)


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-5), ("bfloat16", 0.03)])
def test_feed_forward_matches_autodiff(dtype, atol):
    """The whole training feed-forward (on PyTorch one Function, biases in
    the GEMMs): output and all five gradients equal autodiff's."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5, 6)).astype("float32")
    weights = [rng.normal(size=size).astype("float32") for size in ((6, 8), (8,), (8, 6), (6,))]
    upstream = rng.normal(size=(3, 5, 6)).astype("float32")
    results = []
    for fn in (feed_forward, autodiff_feed_forward):
        def loss(*args, fn=fn):
            out = fn(*(ops.cast(a, dtype) for a in args))
            assert ops.dtype(out) == dtype
            return ops.sum(ops.cast(out, "float32") * ops.convert_to_tensor(upstream))

        results.append(value_and_grads(loss, x, *weights))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5 if atol < 1e-3 else 0.02)
    assert len(results[0][1]) == 5
    for g, p in zip(results[0][1], results[1][1]):
        assert np.abs(p).max() > 0.1
        np.testing.assert_allclose(g, p, atol=atol, rtol=atol)


def test_gelu_derivative_is_the_slope():
    x = np.linspace(-4, 4, 81).astype("float32")
    h = 1e-2  # gelu() runs in float32
    numeric = (to_np(gelu(x + h)) - to_np(gelu(x - h))) / (2 * h)
    np.testing.assert_allclose(to_np(gelu_derivative(x)), numeric, atol=1e-4)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_classifier_training_step_matches_autodiff(monkeypatch, policy):
    """One SGD step of a classifier with dropout, through the hand-written
    backward passes and through autodiff with the same masks: same weights."""
    from bertdesk import BertBackbone
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier

    keras.config.set_dtype_policy(policy)
    model = BertTextClassifier(BertBackbone(**{**TINY, "dropout": 0.2,
                                               "attention_dropout": 0.3}), num_classes=3)
    rng = np.random.default_rng(7)
    model.set_weights([w + 0.1 * rng.standard_normal(w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    x, y = random_batch(seq=10), np.array([0, 2, 1], "int32")
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)  # the first call builds (and draws) once
    before, rng_state = model.get_weights(), rng_snapshot(model)
    model.train_on_batch(x, y)
    lean = model.get_weights()
    changed = sum(not np.allclose(a, b) for a, b in zip(before, lean))
    assert changed > 10

    monkeypatch.setattr(bert_self_attention, "dropout_attention", autodiff_dropout_attention)
    monkeypatch.setattr(bert_encoder_block, "feed_forward", autodiff_feed_forward)
    model.set_weights(before)
    rng_restore(model, rng_state)
    model.compile(optimizer=keras.optimizers.SGD(0.5),  # retrace with the plain ops
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)
    # each update within 0.1% (float32) or 5% (bfloat16) of its largest
    # element: a weight's whole update is below bfloat16's rounding of it
    rtol = 1e-3 if policy == "float32" else 0.05
    assert assert_same_updates(before, lean, model.get_weights(), rtol,
                               names=[v.path for v in model.weights]) > 10


def test_gelu_and_softmax_backward_are_their_formulas():
    """The single-kernel PyTorch versions (and the formulas elsewhere) give
    upstream * gelu'(x) and p * (g - sum(g * p))."""
    from math import erf, exp, pi, sqrt

    from bertdesk.layers.lean_backward import gelu_backward, softmax_backward

    rng = np.random.default_rng(3)
    x = (2 * rng.normal(size=(4, 7))).astype("float32")
    g = rng.normal(size=(4, 7)).astype("float32")
    slope = np.vectorize(lambda v: 0.5 * (1 + erf(v / sqrt(2))) + v * exp(-v * v / 2) / sqrt(2 * pi))
    np.testing.assert_allclose(to_np(gelu_backward(ops.convert_to_tensor(g), ops.convert_to_tensor(x))),
                               g * slope(x), atol=1e-5)
    p = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    np.testing.assert_allclose(
        to_np(softmax_backward(ops.convert_to_tensor(g), ops.convert_to_tensor(p))),
        p * (g - (g * p).sum(-1, keepdims=True)), atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's gelu_backward kernel")
def test_gelu_backward_into_its_upstream_is_the_same_gradient():
    """`overwrite=True` (the feed-forward's own product) writes upstream *
    gelu'(x) into the upstream buffer, the same numbers as a fresh output;
    an upstream in another dtype or layout is left alone."""
    import torch

    from bertdesk.layers import fused_kernels

    generator = torch.Generator().manual_seed(5)
    x = 2 * torch.randn(6, 9, generator=generator)
    g = torch.randn(6, 9, generator=generator)
    fresh = fused_kernels.gelu_backward(g, x)
    buffer = g.clone()
    kept = fused_kernels.gelu_backward(buffer, x, overwrite=True)
    assert kept.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(kept, fresh, rtol=0, atol=0)
    assert not torch.equal(fresh, g)
    for other in (g.double(), g.t().contiguous().t(), g.to(torch.bfloat16)):
        before = other.clone()
        out = fused_kernels.gelu_backward(other, x, overwrite=True)
        assert torch.equal(other, before) and out.data_ptr() != other.data_ptr()
        torch.testing.assert_close(out, fresh, rtol=1e-2 if other.dtype == torch.bfloat16 else 1e-6,
                                   atol=1e-2 if other.dtype == torch.bfloat16 else 1e-6)
