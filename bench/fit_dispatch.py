"""What fine-tuning's progress callback costs `fit`: bertdesk's `ProgressEvents`
as it is, against the same events with the callback marked `async_safe`.

Keras hands a step's logs to the callbacks on a worker thread, and lets the
loop go on to the next step, only when every callback says it is safe
(`async_safe`) or overrides no per-batch hook. `ProgressEvents` overrides
`on_train_batch_end`, so Keras converts the logs to Python numbers at every
step, and on JAX (whose calls return before the device has finished) or on a
GPU the loop waits there for the step to end before it prepares the next.
The async variant here reads the learning rate from the schedule at the
step's number instead of from `optimizer.iterations` (which the next step
may already have replaced: a donated JAX buffer is gone) and emits the
events in step order. Same model, data and events; `fit` over one epoch,
alternating, medians over rounds.

    KERAS_BACKEND=jax python bench/fit_dispatch.py --shape mini --batch 16 --seq 128
    KERAS_BACKEND=torch python bench/fit_dispatch.py --shape base --batch 64 --precision bf16

On the 2-core AMD Zen 3 CPU (JAX, 2026-12-04) the two ran alike: mini at
16 x 128, 20 steps, 0.985x (async slower, within the noise); 2 layers of
width 128 at 16 x 64, 60 steps, 1.007x. The host's work overlapped by the
async variant is a few milliseconds a step on a CPU; the measurement that
matters is on a GPU (`bench/gpu_run.sh`).
"""

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="mini", help="a bench/speed.py shape: mini, base, large")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = p.parse_args()

    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import keras
    import numpy as np
    import speed

    import bertdesk
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier
    from bertdesk.training.callbacks import ProgressEvents
    from bertdesk.training.optimization import bert_adamw

    keras.config.set_dtype_policy("mixed_bfloat16" if args.precision == "bf16" else "float32")
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    x = {"token_ids": rng.integers(1000, speed.VOCAB, (n, args.seq)).astype("int32"),
         "segment_ids": np.zeros((n, args.seq), "int32"),
         "padding_mask": np.ones((n, args.seq), "int32")}
    y = rng.integers(0, 2, (n,)).astype("int32")
    backbone = bertdesk.BertBackbone(vocabulary_size=speed.VOCAB, **speed.SHAPES[args.shape])
    model = BertTextClassifier(backbone, num_classes=2)
    model.compile(optimizer=bert_adamw(1e-4, 10_000, 0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class AsyncProgressEvents(ProgressEvents):
        async_safe = True

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            self._turn = threading.Condition()
            self._done = self.initial_epoch * self.steps_per_epoch
            self._first = model.optimizer.iterations.numpy().item()  # before any step

        def on_train_batch_end(self, batch, logs=None):
            step = self.epoch * self.steps_per_epoch + batch + 1
            with self._turn:  # Keras' pool may run two of these at once
                self._turn.wait_for(lambda: self._done == step - 1)
                self._iteration = self._first + step - self.initial_epoch * self.steps_per_epoch
                super().on_train_batch_end(batch, logs)
                self._done = step
                self._turn.notify_all()

        def _step_learning_rate(self):
            schedule = model.optimizer._learning_rate
            return float(keras.ops.convert_to_numpy(schedule(self._iteration - 1)))

    def run(cls):
        events = []
        start = time.perf_counter()
        model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=0,
                  callbacks=[cls(events.append, args.steps, 1, args.batch)])
        return time.perf_counter() - start, events

    print(f"{keras.backend.backend()} {args.shape} {args.precision} batch {args.batch} x "
          f"{args.seq}, {args.steps} steps an epoch, {args.rounds} rounds", flush=True)
    run(ProgressEvents)
    run(AsyncProgressEvents)  # both compiled and warm
    times = {"sync": [], "async": []}
    for _ in range(args.rounds):
        for name, cls in (("sync", ProgressEvents), ("async", AsyncProgressEvents)):
            seconds, events = run(cls)
            steps = [e["step"] for e in events if e["event"] == "step"]
            if steps != list(range(1, args.steps + 1)):
                raise SystemExit(f"{name}: step events {steps}, expected 1..{args.steps}")
            times[name].append(seconds)
    for name, values in times.items():
        print(f"{name:>5}: " + " ".join(f"{v:.3f}" for v in values)
              + f" s; median {statistics.median(values):.3f} s, "
              f"{args.steps * args.batch / statistics.median(values):.1f} seq/s")
    ratio = statistics.median(times["sync"]) / statistics.median(times["async"])
    print(f"async over sync: {ratio:.3f}x")


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    main()
