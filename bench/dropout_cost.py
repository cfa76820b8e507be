"""What dropout costs in a training step, and a prototype of cheaper masks.

A MiniLM-shaped classifier (L6/H384, 12 heads) trains on batch 16 x 256
tokens with Keras' dropout (rate 0.1), with packed-byte masks (random 32-bit
words bitcast to four bytes, each compared with round(rate * 256), kept
values scaled by 256 / (256 - k) so the expectation is unchanged), and with
no dropout; alternating in one process, median step times printed. The
packed masks are patched into Keras' backend dropout (JAX and TensorFlow
only): a prototype for issue 6, not what bertdesk's layers use.

    KERAS_BACKEND=tensorflow .venv/bin/python bench/dropout_cost.py
"""

import time

import numpy as np


def packed_dropout_for(backend):
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        from keras.src.backend.jax import random as module

        def packed(inputs, rate, noise_shape=None, seed=None):
            if rate == 0.0:
                return inputs
            key = module.jax_draw_seed(seed)
            n, k = int(np.prod(inputs.shape)), int(round(rate * 256))
            words = jax.random.bits(key, (-(-n // 4),), jnp.uint32)
            b = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:n]
            keep = b.reshape(inputs.shape) >= k
            return jax.lax.select(keep, inputs * (256.0 / (256 - k)), jnp.zeros_like(inputs))
    elif backend == "tensorflow":
        import tensorflow as tf
        from keras.src.backend.tensorflow import random as module

        def packed(inputs, rate, noise_shape=None, seed=None):
            if rate == 0.0:
                return inputs
            seed = module._cast_seed(module.draw_seed(seed))
            shape = tf.shape(inputs)
            n, k = tf.reduce_prod(shape), int(round(rate * 256))
            words = tf.random.stateless_uniform(((n + 3) // 4,), seed, dtype=tf.uint32,
                                                minval=None, maxval=None)
            b = tf.reshape(tf.bitcast(words, tf.uint8), [-1])[:n]
            keep = tf.reshape(b, shape) >= k
            return tf.where(keep, inputs * (256.0 / (256 - k)), tf.zeros_like(inputs))
    else:
        return None, None
    return module, packed


def main():
    import keras

    import bertdesk
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier

    backend = keras.backend.backend()
    module, packed = packed_dropout_for(backend)
    original = module.dropout if module else None
    batch, length = 16, 256
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(5, 30000, (batch, length)).astype("int32"),
         "segment_ids": np.zeros((batch, length), "int32"),
         "padding_mask": np.ones((batch, length), "int32")}
    y = rng.integers(0, 2, (batch,)).astype("int32")
    variants = [("keras dropout", 0.1, original), ("no dropout", 0.0, original)]
    if packed:
        variants.insert(1, ("packed masks", 0.1, packed))
    times = {name: [] for name, _, _ in variants}
    for _ in range(2):
        for name, rate, fn in variants:
            if module:
                module.dropout = fn
            keras.utils.set_random_seed(0)
            backbone = bertdesk.BertBackbone(vocabulary_size=30522, num_layers=6, num_heads=12,
                                             hidden_dim=384, intermediate_dim=1536,
                                             dropout=rate, attention_dropout=rate)
            model = BertTextClassifier(backbone, num_classes=2)
            model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          jit_compile=backend != "torch")
            for _ in range(3):
                model.train_on_batch(x, y)
            for _ in range(5):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                times[name].append(time.perf_counter() - start)
    base = np.median(times["keras dropout"])
    for name, ts in times.items():
        print(f"{backend:<10} {name:<14} step {1000 * np.median(ts):7.0f} ms  "
              f"{base / np.median(ts):.2f}x Keras' dropout", flush=True)
    if packed:
        out = packed(keras.ops.ones((1000, 1000)), 0.1, seed=keras.random.SeedGenerator(1))
        out = keras.ops.convert_to_numpy(out)
        print(f"packed masks at rate 0.1: kept {(out > 0).mean():.4f} "
              f"(exact: {1 - round(0.1 * 256) / 256:.4f}), mean {out.mean():.4f}")


if __name__ == "__main__":
    main()
