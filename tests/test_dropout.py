"""`BertDropout` (16 random bits per element) on the current backend: the
drop rate and scale, independence of the two halves of a random word,
determinism, gradients, dtypes, shapes, saving, and a jit-compiled step."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from harness import check_config_roundtrip, check_keras_roundtrip

from bertdesk.layers import BertDropout


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x)).astype(np.float64)


def _apply(layer, x):
    return _np(layer(keras.ops.convert_to_tensor(x, "float32"), training=True))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_drop_rate_and_scale(rate):
    n = 1_000_000
    out = _apply(BertDropout(rate, seed=5), np.ones((1000, 1000)))
    kept = out != 0
    # 5 standard deviations of a binomial proportion over a million draws
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    threshold = round(rate * 65536)
    np.testing.assert_allclose(np.unique(out[kept]), [65536 / (65536 - threshold)], rtol=1e-6)
    assert abs(out.mean() - 1) < 5 * np.sqrt(rate / (1 - rate) / n)


def test_the_two_halves_of_a_word_are_independent():
    """Neighbours along the last axis share a 32-bit word (its two halves);
    elements L/2 apart and rows apart do not. Each pair must drop together
    with probability rate**2."""
    rate, n = 0.5, 1000
    dropped = _apply(BertDropout(rate, seed=9), np.ones((n, n))) == 0
    for a, b in [(dropped[:, : n // 2], dropped[:, n // 2:]),
                 (dropped[:, :-1], dropped[:, 1:]),
                 (dropped[:-1], dropped[1:])]:
        both = (a & b).mean()
        assert abs(both - rate**2) < 5 * np.sqrt(rate**2 * (1 - rate**2) / a.size), both


def test_inference_and_zero_rate_are_identity():
    x = np.random.default_rng(0).normal(size=(4, 7, 6)).astype("float32")
    layer = BertDropout(0.3, seed=1)
    np.testing.assert_array_equal(_np(layer(x)), x.astype(np.float64))
    np.testing.assert_array_equal(_np(layer(x, training=False)), x.astype(np.float64))
    zero = BertDropout(0.0)
    np.testing.assert_array_equal(_np(zero(x, training=True)), x.astype(np.float64))
    assert not zero.non_trainable_variables  # no generator state to save or restore
    np.testing.assert_array_equal(_np(BertDropout(1.0)(x, training=True)), 0)


def test_kept_values_are_the_inputs_scaled():
    x = np.random.default_rng(1).normal(size=(64, 33)).astype("float32")
    out = _apply(BertDropout(0.25, seed=2), x)
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] * 65536 / (65536 - 16384), rtol=1e-6)


def test_seeded_masks_repeat_and_successive_calls_differ():
    x = np.ones((50, 40))
    first, second = BertDropout(0.5, seed=3), BertDropout(0.5, seed=3)
    a1, a2 = _apply(first, x), _apply(first, x)
    b1 = _apply(second, x)
    np.testing.assert_array_equal(a1, b1)  # same seed, same first mask
    assert (a1 != a2).mean() > 0.3  # the generator advances between calls
    c1 = _apply(BertDropout(0.5, seed=4), x)
    assert (a1 != c1).mean() > 0.3


def test_unseeded_masks_follow_the_global_seed():
    x = np.ones((50, 40))
    keras.utils.set_random_seed(11)
    a = _apply(BertDropout(0.5), x)
    keras.utils.set_random_seed(11)
    b = _apply(BertDropout(0.5), x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(5,), (3, 1), (2, 3, 7), (2, 2, 5, 8)])
def test_any_shape_and_odd_last_dimension(shape):
    out = _apply(BertDropout(0.5, seed=1), np.ones(shape))
    assert out.shape == shape
    assert set(np.unique(out)) <= {0.0, 2.0}


def test_gradient_is_the_mask_times_the_scale():
    """d(sum(w * dropout(x)))/dx = w * scale where kept, 0 where dropped, taken
    through a one-variable model so every backend's autodiff runs."""
    rate = 0.2
    x = np.random.default_rng(2).normal(size=(8, 12)).astype("float32")
    w = np.random.default_rng(3).normal(size=(8, 12)).astype("float32")
    variable = keras.Variable(x)
    layer = BertDropout(rate, seed=7)
    threshold = round(rate * 65536)
    scale = 65536 / (65536 - threshold)
    if keras.backend.backend() == "jax":
        import jax

        state = [v.value for v in layer.non_trainable_variables]

        def loss(value):
            out, _ = layer.stateless_call([], state, value, training=True)
            return (out * w).sum()

        grad = jax.grad(loss)(variable.value)
        out, _ = layer.stateless_call([], state, variable.value, training=True)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            out = layer(variable.value, training=True)
            loss = tf.reduce_sum(out * w)
        grad = tape.gradient(loss, variable.value)
    else:
        out = layer(variable.value, training=True)
        (out * keras.ops.convert_to_tensor(w)).sum().backward()
        grad = variable.value.grad
    kept = _np(out) != 0
    np.testing.assert_allclose(_np(grad), np.where(kept, w * scale, 0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_add_to_is_the_residual_plus_the_dropout(dtype):
    """`add_to(r, x)` (one kernel on PyTorch) equals `r + layer(x)` for the
    same mask, keeps the dtype, and is the identity plus `r` in inference."""
    rng = np.random.default_rng(4)
    x = keras.ops.convert_to_tensor(rng.normal(size=(6, 9, 10)), dtype)
    r = keras.ops.convert_to_tensor(rng.normal(size=(6, 9, 10)), dtype)
    layer = BertDropout(0.3, seed=3, dtype=dtype)
    seed = layer.draw_seed()
    fused = layer.add_to(r, x, training=True, drawn_seed=seed)
    assert keras.backend.standardize_dtype(fused.dtype) == dtype
    plain = r + layer(x, training=True, drawn_seed=seed)
    assert (_np(plain) != _np(r)).any() and (_np(plain) == _np(r)).any()  # some kept, some dropped
    if keras.backend.backend() != "torch":  # the same formula
        np.testing.assert_array_equal(_np(fused), _np(plain))
    else:  # addcmul rounds once or twice where the formula rounds twice
        kept = _np(layer(x, training=True, drawn_seed=seed)) != 0
        dropped_out = np.where(kept, _np(x) * 65536 / (65536 - round(0.3 * 65536)), 0)
        unit = 2.0**-8 if dtype == "bfloat16" else 2.0**-24
        error = np.abs(_np(fused) - (_np(r) + dropped_out))
        assert (error <= 2 * unit * (np.abs(_np(r)) + np.abs(dropped_out))).all()
    np.testing.assert_array_equal(_np(layer.add_to(r, x)), _np(r + x))


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's kernel (addcmul)")
def test_add_to_gradients_are_the_mask_and_one():
    import torch

    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(size=(8, 12)), dtype=torch.float32, requires_grad=True)
    r = torch.tensor(rng.normal(size=(8, 12)), dtype=torch.float32, requires_grad=True)
    w = rng.normal(size=(8, 12)).astype("float32")
    layer = BertDropout(0.2, seed=7)
    seed = layer.draw_seed()
    (layer.add_to(r, x, training=True, drawn_seed=seed) * torch.tensor(w)).sum().backward()
    kept = _np(layer(x.detach(), training=True, drawn_seed=seed)) != 0
    np.testing.assert_allclose(_np(x.grad), np.where(kept, w * 65536 / (65536 - round(0.2 * 65536)), 0),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(_np(r.grad), w)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_inputs_keep_their_dtype(dtype):
    layer = BertDropout(0.5, seed=1, dtype=dtype)
    out = layer(keras.ops.ones((16, 16), dtype), training=True)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    assert set(np.unique(_np(out))) == {0.0, 2.0}


def test_config_and_keras_file_roundtrip(tmp_path):
    layer = BertDropout(0.3, seed=8, name="drop")
    check_config_roundtrip(layer)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, layer(inputs))
    check_keras_roundtrip(model, np.ones((2, 6), "float32"), tmp_path)


def test_rate_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="rate must be in"):
        BertDropout(1.5)


def test_compiled_fit_step_drops():
    """Inside a jit-compiled `fit` (XLA on JAX and TensorFlow), on inputs whose
    batch and last axis are unknown when the graph is traced, the mask is drawn
    afresh each step and the loss reflects it."""
    inputs = keras.Input((64, None))  # (batch, 64, length): the last axis varies
    dropped = keras.layers.Permute((2, 1))(BertDropout(0.5, seed=1)(inputs))
    outputs = keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)(dropped)
    model = keras.Model(inputs, outputs)  # (batch, length, 1)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse",
                  jit_compile=keras.backend.backend() != "torch")
    for length in (3, 5):
        x, y = np.ones((4, 64, length), "float32"), np.full((4, length, 1), 64.0, "float32")
        losses = [model.train_on_batch(x, y) for _ in range(3)]
        assert len(set(np.round(losses, 4))) > 1  # a new mask each step
        np.testing.assert_allclose(model.predict(x, verbose=0), y)  # identity at inference


def test_torch_compile_draws_the_same_halves():
    """Under torch.compile the int64 words are split by shifts, not viewed
    as int16: the same halves, and a compiled training step drops."""
    if keras.backend.backend() != "torch":
        pytest.skip("PyTorch only")
    import torch

    from bertdesk.layers.random_bits import _int16_halves_by_shifts

    words = torch.empty(4096, dtype=torch.int64).random_(-(2**63), None)
    words[:3] = torch.tensor([-1, 0, -(2**63)])
    np.testing.assert_array_equal(_int16_halves_by_shifts(torch, words).numpy(),
                                  words.view(torch.int16).numpy())
    layer = BertDropout(0.25)
    out = torch.compile(lambda x: layer(x, training=True))(torch.ones(256, 512))
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.25) < 5 * (0.25 * 0.75 / out.numel()) ** 0.5
    np.testing.assert_allclose(out[out != 0].numpy(), 65536 / (65536 - 16384))


def test_torch_masks_are_the_plain_comparison():
    """On PyTorch the keep mask is compared into uint8 and viewed as bool,
    and turned into floats through that view: the same masks as `>=` and
    a bool-to-float cast, at every threshold, edges included."""
    if keras.backend.backend() != "torch":
        pytest.skip("PyTorch only")
    import torch

    from bertdesk.layers.fused_kernels import float_mask, keep_mask

    halves = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).reshape(256, 256)
    for threshold in (-32768, -26214, -1, 0, 32767):
        keep = keep_mask(halves, threshold)
        assert keep.dtype == torch.bool
        assert torch.equal(keep, halves >= threshold)
        assert torch.equal(~keep, halves < threshold)
        for dtype in (torch.float32, torch.bfloat16):
            floats = float_mask(keep, dtype)
            assert floats.dtype == dtype and torch.equal(floats, (halves >= threshold).to(dtype))


JAX_SHARDED_MASK = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from bertdesk.layers.random_bits import random_int16
assert len(jax.devices()) == 2
shape, key = (8, 4, 16, 16), np.array([3, 7], np.uint32)
draw = lambda key: random_int16(shape, key)
one = np.asarray(jax.jit(draw)(key))
rows = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
halves = jax.jit(draw, out_shardings=rows)(key)
assert len(halves.addressable_shards) == 2
np.testing.assert_array_equal(np.asarray(halves), one)
again = np.asarray(jax.jit(draw)(key))
np.testing.assert_array_equal(again, one)
assert len(np.unique(one)) > 0.9 * one.size  # 8,192 draws of 65,536 values: 6% repeat
print("ok")
"""


def test_jax_bits_split_across_devices_are_the_one_device_bits():
    """JAX's bits (XLA's threefry generator, `lax.rng_bit_generator`) drawn
    into an array split over two devices are the one-device bits, so data
    parallel training drops what one device would."""
    if keras.backend.backend() != "jax":
        pytest.skip("JAX only")
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, "-c", JAX_SHARDED_MASK], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
