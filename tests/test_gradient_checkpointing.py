"""Gradient checkpointing (`gradient_checkpointing=True`) trains to the same
weights, draws the same dropout masks and keeps less for the backward pass."""

import keras
import numpy as np
import pytest
from conftest import TINY, random_batch
from harness import assert_same_updates, rng_restore, rng_snapshot, to_np

from bertdesk import BertBackbone
from bertdesk.layers.bert_dropout import BertDropout
from bertdesk.layers.bert_encoder_block import BertEncoderBlock
from bertdesk.tasks.bert_text_classifier import BertTextClassifier


def _sgd_step(model, x, y):
    model.compile(optimizer=keras.optimizers.SGD(0.5),  # (re)trace with the current flag
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_checkpointed_step_matches_the_plain_step(policy):
    """One SGD step of a classifier with dropout (whose last block runs on
    the [CLS] query only), with and without checkpointing, from the same
    weights and generator states: the same weights and generator states
    after it."""
    keras.config.set_dtype_policy(policy)
    backbone = BertBackbone(**{**TINY, "dropout": 0.2, "attention_dropout": 0.3})
    model = BertTextClassifier(backbone, num_classes=3)
    rng = np.random.default_rng(7)
    model.set_weights([w + 0.1 * rng.standard_normal(w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    x, y = random_batch(seq=10), np.array([0, 2, 1], "int32")
    _sgd_step(model, x, y)  # builds (and draws) once
    before, rng_before = model.get_weights(), rng_snapshot(model)
    _sgd_step(model, x, y)
    plain, rng_plain = model.get_weights(), rng_snapshot(model)
    assert sum(not np.allclose(a, b) for a, b in zip(before, plain)) > 10

    model.set_weights(before)
    rng_restore(model, rng_before)
    backbone.gradient_checkpointing = True
    assert all(layer.gradient_checkpointing for layer in backbone.encoder_layers)
    _sgd_step(model, x, y)
    # each update within 0.01% (float32) or 5% (bfloat16) of its largest
    # element: a weight's whole update is below bfloat16's rounding of it
    rtol = 1e-4 if policy == "float32" else 0.05
    assert assert_same_updates(before, plain, model.get_weights(), rtol,
                               names=[v.path for v in model.weights]) > 10
    for a, b in zip(rng_plain, rng_snapshot(model), strict=True):
        np.testing.assert_array_equal(a, b)  # no generator advanced twice


def _block_case():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 16)).astype("float32")
    query = x[:, :2] + 0.5
    mask = np.ones((2, 7), "int32")
    mask[1, 4:] = 0
    return x, query, mask


def _block_grads(block, x, query, mask):
    """Gradients of a weighted sum of the training output with respect to x,
    query and every weight (the backend's own autodiff)."""
    weights = np.arange(2 * 2 * 16, dtype="float32").reshape(2, 2, 16) / 64
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        variables = [v.value for v in block.trainable_variables]

        def loss(values, x, query):
            with keras.StatelessScope(state_mapping=list(zip(block.trainable_variables, values))):
                out = block(x, padding_mask=mask, training=True, query=query)
            return (out * weights).sum()

        grads = jax.grad(loss, argnums=(0, 1, 2))(variables, x, query)
        return [to_np(g) for g in grads[0]] + [to_np(grads[1]), to_np(grads[2])]
    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(x), tf.constant(query)]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            out = block(xs[0], padding_mask=mask, training=True, query=xs[1])
            loss = tf.reduce_sum(out * weights)
        grads = tape.gradient(loss, [v.value for v in block.trainable_variables] + xs)
        return [to_np(g) for g in grads]
    import torch

    xs = [torch.tensor(x, requires_grad=True), torch.tensor(query, requires_grad=True)]
    for v in block.trainable_variables:
        v.value.grad = None
    out = block(xs[0], padding_mask=torch.tensor(mask), training=True, query=xs[1])
    (out * torch.tensor(weights)).sum().backward()
    return [to_np(v.value.grad) for v in block.trainable_variables] + [to_np(t.grad) for t in xs]


def test_checkpointed_block_gradients_reach_query_and_weights():
    """A block with dropout and a separate query: gradients with respect to
    the input, the query and every weight equal the plain block's."""
    x, query, mask = _block_case()
    block = BertEncoderBlock(num_heads=2, intermediate_dim=32, dropout=0.2,
                             attention_dropout=0.3)
    block(x, padding_mask=mask)  # build
    state = rng_snapshot(block)
    plain = _block_grads(block, x, query, mask)
    rng_restore(block, state)
    block.gradient_checkpointing = True
    checkpointed = _block_grads(block, x, query, mask)
    assert len(plain) == len(block.trainable_variables) + 2
    assert all(np.abs(g).max() > 0 for g in plain)
    for a, b in zip(plain, checkpointed, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("seed", [None, 5])
def test_drawn_seed_makes_the_mask_the_generator_would(seed):
    """`draw_seed()` advances the generator by one draw, and `drawn_seed=`
    makes the mask that draw would have made, without advancing it again."""
    x = np.ones((4, 6, 33), "float32")
    layer, twin = BertDropout(0.4, seed=seed), BertDropout(0.4, seed=seed)
    if seed is None:  # unseeded: the same start state for both
        twin.seed_generator.state.assign(layer.seed_generator.state.value)
    if keras.backend.backend() == "torch" and seed is None:
        import torch  # unseeded BertDropout on PyTorch: torch's global generator at mask time

        state = torch.get_rng_state()
        assert layer.draw_seed() is None
        assert torch.equal(torch.get_rng_state(), state)  # drawing a seed draws nothing
        return
    drawn = layer.draw_seed()
    after_draw = keras.ops.convert_to_numpy(layer.seed_generator.state)
    expected = to_np(twin(x, training=True))  # twin draws from its generator
    np.testing.assert_array_equal(after_draw, keras.ops.convert_to_numpy(twin.seed_generator.state))
    got = to_np(layer(x, training=True, drawn_seed=drawn))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.seed_generator.state),
                                  after_draw)  # drawn_seed= leaves the generator alone
    assert 0.2 < (got == 0).mean() < 0.6


def test_flag_is_config_not_architecture():
    """The flag round-trips through get_config, and saved folders (the
    architecture config) do not record it."""
    backbone = BertBackbone(**TINY, gradient_checkpointing=True)
    assert backbone.get_config()["gradient_checkpointing"] is True
    assert BertBackbone.from_config(backbone.get_config()).gradient_checkpointing
    assert "gradient_checkpointing" not in backbone.architecture_config()
    block = backbone.encoder_layers[0]
    assert BertEncoderBlock.from_config(block.get_config()).gradient_checkpointing
    backbone.gradient_checkpointing = False
    assert not any(layer.gradient_checkpointing for layer in backbone.encoder_layers)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch saved-tensor hooks")
def test_checkpointing_keeps_a_fraction_of_the_saved_tensors():
    """What a training forward pass keeps for backward (PyTorch's
    saved-tensor hooks, distinct storages): with checkpointing, under a
    third of it without."""
    import torch

    backbone = BertBackbone(**{**TINY, "num_layers": 4, "hidden_dim": 32,
                               "intermediate_dim": 128})
    x = random_batch(seq=24)

    def saved_bytes():
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = backbone(x, training=True)["sequence_output"]
        params = {v.value.untyped_storage().data_ptr() for v in backbone.weights}
        out.sum().backward()
        return sum(n for ptr, n in storages.items() if ptr not in params)

    plain = saved_bytes()
    backbone.gradient_checkpointing = True
    checkpointed = saved_bytes()
    assert checkpointed < plain / 3, (checkpointed, plain)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch saved-tensor hooks")
def test_lean_ops_keep_their_tensors_where_checkpointing_sees_them():
    """The lean backward passes keep what they need through autograd's
    saved tensors (which checkpointing drops and recomputes); Keras'
    `custom_gradient` leaves intermediates in a closure on PyTorch."""
    import torch

    from bertdesk.layers.lean_backward import dropout_attention, feed_forward, gelu_matmul

    rng = np.random.default_rng(0)
    q, k, v = (torch.tensor(rng.normal(size=(2, 5, 3, 4)).astype("float32"),
                            requires_grad=True) for _ in range(3))
    keep = torch.tensor(rng.random((2, 3, 5, 5)) > 0.2)
    z = torch.tensor(rng.normal(size=(2, 5, 8)).astype("float32"), requires_grad=True)
    kernel = torch.tensor(rng.normal(size=(8, 6)).astype("float32"), requires_grad=True)
    up, up_bias, down, down_bias = (
        torch.tensor(rng.normal(size=size).astype("float32"), requires_grad=True)
        for size in ((4, 8), (8,), (8, 4), (4,)))
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        out = dropout_attention(q, k, v, keep, scale=0.5, rescale=1.25)
        out = out.sum() + gelu_matmul(z, kernel).sum()
        out = out + feed_forward(q[:, :, 0], up, up_bias, down, down_bias).sum()
    shapes = {(tuple(t.shape), t.dtype) for t in packed}
    assert ((2, 3, 5, 5), torch.float32) in shapes  # the probabilities
    assert ((2, 3, 5, 5), torch.bool) in shapes  # the keep mask
    assert ((2, 5, 8), torch.float32) in shapes  # gelu_matmul's GELU input
    assert ((10, 8), torch.float32) in shapes  # feed_forward's (tokens, intermediate)
    out.backward()
    assert all(t.grad is not None for t in (q, k, v, z, kernel, up, up_bias, down, down_bias))
