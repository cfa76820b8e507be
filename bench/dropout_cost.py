"""What dropout costs in a training step: Keras' dropout against bertdesk's.

A MiniLM-shaped classifier (L6/H384, 12 heads) trains on batch 16 x 256
tokens with Keras' `Dropout` layer (one 32-bit draw per element), with
`BertDropout` (one 16-bit half of a draw per element, `bertdesk/layers`), and
with no dropout (rate 0); alternating in one process, median step times
printed. Keras' dropout is swapped into bertdesk's layers for the first
variant, nothing else changes (with it, attention drops its probabilities
through Keras' layer; with `BertDropout` it takes the keep mask alone and
scales its output instead). Then the two layers' masks alone, on one
attention-probability tensor (16, 12, 256, 256).

    KERAS_BACKEND=tensorflow .venv/bin/python bench/dropout_cost.py
"""

import time

import keras
import numpy as np

import bertdesk
from bertdesk.layers import bert_embeddings, bert_encoder_block, bert_self_attention
from bertdesk.layers.bert_dropout import BertDropout
from bertdesk.tasks.bert_text_classifier import BertTextClassifier

_MODULES = (bert_embeddings, bert_encoder_block, bert_self_attention)


def use_dropout_class(cls):
    for module in _MODULES:
        module.BertDropout = cls


def step_times(backend, rounds=2, steps=5):
    batch, length = 16, 256
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(5, 30000, (batch, length)).astype("int32"),
         "segment_ids": np.zeros((batch, length), "int32"),
         "padding_mask": np.ones((batch, length), "int32")}
    y = rng.integers(0, 2, (batch,)).astype("int32")
    variants = [("keras dropout", 0.1, keras.layers.Dropout),
                ("bertdesk dropout", 0.1, BertDropout),
                ("no dropout", 0.0, BertDropout)]
    times = {name: [] for name, _, _ in variants}
    for _ in range(rounds):
        for name, rate, cls in variants:
            use_dropout_class(cls)
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
            for _ in range(steps):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                times[name].append(time.perf_counter() - start)
    use_dropout_class(BertDropout)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def mask_times(backend, repeats=5):
    """One (16, 12, 256, 256) mask, jit-compiled where the backend compiles.
    Unseeded, as in the model (on PyTorch Keras then takes `F.dropout`)."""
    x = keras.ops.ones((16, 12, 256, 256))
    results = {}
    keras.utils.set_random_seed(1)
    for name, layer in [("keras dropout", keras.layers.Dropout(0.1)),
                        ("bertdesk dropout", BertDropout(0.1))]:
        if backend == "jax":
            import jax

            state = [v.value for v in layer.non_trainable_variables]
            stateless = jax.jit(lambda s, x: layer.stateless_call([], s, x, training=True))

            def fn(x, stateless=stateless):
                out, new_state = stateless(state, x)
                state[:] = new_state
                return out
        elif backend == "tensorflow":
            import tensorflow as tf

            fn = tf.function(lambda x: layer(x, training=True), jit_compile=True)
        else:
            fn = lambda x: layer(x, training=True)  # noqa: E731
        out = keras.ops.convert_to_numpy(fn(x))
        ts = []
        for _ in range(repeats):
            start = time.perf_counter()
            keras.ops.convert_to_numpy(fn(x)[0, 0, 0, :1])
            ts.append(time.perf_counter() - start)
        results[name] = (float(np.median(ts)), float((out > 0).mean()), float(out.mean()))
    return results


def main():
    backend = keras.backend.backend()
    for name, (seconds, kept, mean) in mask_times(backend).items():
        print(f"{backend:<10} mask  {name:<16} {1000 * seconds:7.0f} ms  "
              f"kept {kept:.5f}  mean {mean:.5f}", flush=True)
    times = step_times(backend)
    base = times["keras dropout"]
    for name, seconds in times.items():
        print(f"{backend:<10} step  {name:<16} {1000 * seconds:7.0f} ms  "
              f"{base / seconds:.2f}x Keras' dropout", flush=True)


if __name__ == "__main__":
    main()
