"""Random 16-bit integers from each backend's counter-based generator.

The one backend-specific module under `bertdesk/layers`, and why: `keras.random`
has no call that returns raw random bits. Its `uniform`, `bernoulli` and
`dropout` spend one full 32-bit draw per element, and on a CPU those draws are
most of what a dropout mask costs: one `(16, 12, 256, 256)` attention mask
takes 132 ms with Keras' dropout on JAX and 115 ms on PyTorch, against 76 and
53 ms with half as many words (`bench/dropout_cost.py`; on JAX, since then,
XLA's own threefry generator draws them faster again: `_jax_words`).
`BertDropout` needs only 16 bits per element, so it takes them from here,
two per 32-bit draw.

Seeds follow Keras' own dropout: a `keras.random.SeedGenerator` state advances
by one per call (a threefry key on JAX, TensorFlow's stateless Philox, a seeded
`torch.Generator`); on PyTorch an unseeded generator draws from torch's global
generator, as Keras' unseeded dropout does there.
"""

import math

import keras


# === Bits ===
def draw_seed(seed_generator):
    """The seed of one `random_int16` draw, advancing `seed_generator` as the
    draw would: a raw threefry key on JAX, an int32 pair on TensorFlow, a
    Python int on PyTorch (None for a generator made without a seed, whose
    draws come from torch's global generator). Drawn ahead, it lets a
    recomputed forward pass (gradient checkpointing) make the same bits
    again without touching the generator's state.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return seed_generator.next()  # (2,) uint32
    if backend == "tensorflow":
        import tensorflow as tf

        seed = seed_generator.next()
        if seed.dtype != tf.int32:  # as Keras' TensorFlow random ops cast theirs
            seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        return seed
    if backend == "torch":
        if seed_generator.get_config()["seed"] is None:
            return None
        first, second = (int(v) for v in seed_generator.next().tolist())
        return (first + second) & 0xFFFFFFFF
    raise NotImplementedError(f"draw_seed: backend {backend!r} is not supported")


def random_int16(shape, seed, like=None):
    """An `int16` tensor of `shape`, uniform over all 65,536 values, from half
    as many 32-bit draws (each word is split into two neighbouring elements
    along the last axis).

    Args:
        shape: tuple of ints (or, on TensorFlow inside a graph, scalar tensors).
        seed: a `keras.random.SeedGenerator`, advanced by one draw, or a seed
            that `draw_seed` returned (the same bits as the draw it stands for).
        like: a tensor on the device the bits should live on (PyTorch).
    """
    if isinstance(seed, keras.random.SeedGenerator):
        seed = draw_seed(seed)
    shape = tuple(shape)
    last = shape[-1]
    words_shape = shape[:-1] + ((last + 1) // 2,)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        words = _jax_words(seed, words_shape)
        halves = jax.lax.bitcast_convert_type(words, "int16")  # (..., words, 2)
        return halves.reshape(shape[:-1] + (-1,))[..., :last]
    if backend == "tensorflow":
        import tensorflow as tf

        # Philox named explicitly: "auto_select" (the default) is Philox on
        # the CPU kernels but, under XLA on CPU, a generator 3-4x slower
        # (a (32, 128, 128) block's training step: 180 ms against 56).
        words = tf.random.stateless_uniform(
            words_shape, seed=seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox"
        )
        halves = tf.bitcast(words, tf.int16)  # (..., words, 2)
        return tf.reshape(halves, tf.concat([tf.shape(words)[:-1], [-1]], 0))[..., :last]
    if backend == "torch":
        import torch

        return _torch_int16(torch, tuple(int(d) for d in shape), seed, like)
    raise NotImplementedError(f"random_int16: backend {backend!r} is not supported")


def _jax_words(key, shape):
    """uint32 words of `shape` from a raw threefry key `(2,) uint32`: XLA's
    own threefry generator (`lax.rng_bit_generator`) keyed by it, its
    counter starting at 0.

    `jax.random.bits` computes the same hash through ops that XLA's CPU
    backend writes out whole past a few million words: 41.6 ms for 6.3M
    words (one `(16, 12, 256, 256)` attention mask, MiniLM at 256 tokens)
    against 8.1 here; at 0.5M and 1.6M words 0.8-1.1 and 2.4-2.8 ms against
    0.7 and 2.0 (2 AMD Zen 5 cores). The words differ from
    `jax.random.bits`' for the same key; each key still gives the same
    words every time."""
    from jax import lax
    from jax import numpy as jnp

    key = jnp.asarray(key, jnp.uint32).reshape(2)
    state = jnp.concatenate([key, jnp.zeros((2,), jnp.uint32)])  # (key, counter)
    return lax.rng_bit_generator(state, shape, jnp.uint32, lax.RandomAlgorithm.RNG_THREE_FRY)[1]


def _torch_int16(torch, shape, seed, like):
    device = like.device if like is not None else torch.get_default_device()
    count = math.prod(shape)
    if device.type == "meta":  # Keras' symbolic shape inference
        return torch.empty(shape, dtype=torch.int16, device=device)
    # 64-bit words over the full range are PyTorch's cheapest draw per bit
    # (one generator call gives four 16-bit halves).
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    words.random_(-(2**63), None, generator=generator)
    if torch.compiler.is_compiling():
        # torch.compile cannot reinterpret int64 storage as int16 (a view
        # with another item size); the same four little-endian halves by
        # shifts, cast with wrap-around to int16.
        return _int16_halves_by_shifts(torch, words)[:count].reshape(shape)
    return words.view(torch.int16)[:count].reshape(shape)


def _int16_halves_by_shifts(torch, words):
    """`words.view(torch.int16)` (int64 words, little-endian) by arithmetic."""
    halves = torch.stack([(words >> (16 * i)) & 0xFFFF for i in range(4)], dim=-1)
    return halves.to(torch.int16).reshape(-1)
