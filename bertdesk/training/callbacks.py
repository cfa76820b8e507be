"""Keras callbacks that report training as plain events (dicts), evaluate on
the validation set, keep the best model and write resumable checkpoints.

Events, in order: `train_begin`, then per step `step`, per epoch `epoch`,
and `train_end`. Every event is a JSON-serialisable dict with an "event" key;
the terminal progress bar and the desktop app both consume them.
"""

import json
import math
import sys
import time

import keras
import numpy as np

from bertdesk.io.atomic import atomic_write_text


def _float(x):
    try:
        return float(np.asarray(keras.ops.convert_to_numpy(x)))
    except Exception:
        return float(x)


class ProgressEvents(keras.callbacks.Callback):
    """Emits `step` events (step, epoch, loss, learning rate, throughput, ETA)."""

    def __init__(self, sink, steps_per_epoch, epochs, batch_size, initial_epoch=0, every=1):
        super().__init__()
        self.sink = sink
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.batch_size = batch_size
        self.initial_epoch = initial_epoch
        self.every = max(1, every)
        self.total_steps = steps_per_epoch * epochs

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.steps_done = 0
        self.sink({"event": "train_begin", "epochs": self.epochs,
                   "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                   "initial_epoch": self.initial_epoch})

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done += 1
        step = self.epoch * self.steps_per_epoch + batch + 1
        if step % self.every and batch + 1 != self.steps_per_epoch:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.steps_done / elapsed if elapsed > 0 else 0.0
        remaining = self.total_steps - step
        self.sink({"event": "step", "step": step, "total_steps": self.total_steps,
                   "epoch": self.epoch + 1, "epochs": self.epochs,
                   "loss": _float((logs or {}).get("loss", math.nan)),
                   "learning_rate": self._step_learning_rate(),
                   "examples_per_second": rate * self.batch_size,
                   "elapsed_seconds": elapsed,
                   "eta_seconds": remaining / rate if rate > 0 else None})


    def _step_learning_rate(self):
        """The learning rate of the latest update (the optimizer's
        `learning_rate` already gives the next one's); under gradient
        accumulation, before the first update, the first's."""
        opt = self.model.optimizer
        schedule = getattr(opt, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return _float(schedule(max(0.0, _float(opt.iterations) - 1)))
        return _float(opt.learning_rate)


class ApplyAccumulated(keras.callbacks.Callback):
    """At each epoch's end, applies the gradients of batches still waiting
    for an update under gradient accumulation (`apply_accumulated`), so the
    epoch is evaluated and saved with every batch it trained on. Goes before
    the callbacks that evaluate or save."""

    def on_epoch_end(self, epoch, logs=None):
        from bertdesk.training.optimization import apply_accumulated

        apply_accumulated(self.model.optimizer)


class ValidationCallback(keras.callbacks.Callback):
    """At each epoch end, runs `evaluate_fn()` -> metrics dict, adds its
    numbers to the logs as `val_<name>` (for early stopping and best-model
    keeping) and emits an `epoch` event. With `defer=True` the event is kept
    in `last_event` for a later callback (`emit_epoch_event`) to send, so
    that it can follow the model and checkpoint saves of the same epoch."""

    def __init__(self, evaluate_fn, sink, monitor, mode="max", defer=False):
        super().__init__()
        self.evaluate_fn = evaluate_fn
        self.sink = sink
        self.monitor = monitor
        self.mode = mode
        self.defer = defer
        self.best = None
        self.last_event = None

    def emit_epoch_event(self):
        """A callback (place it last) that sends the deferred `epoch` event."""
        return keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: self.sink(self.last_event))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        metrics = self.evaluate_fn() if self.evaluate_fn else {}
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                logs[f"val_{k}"] = v
        value = metrics.get(self.monitor)
        improved = _improves(value, self.best, self.mode)
        if improved:
            self.best = value
        logs["_improved"] = improved
        self.last_event = {
            "event": "epoch", "epoch": epoch + 1, "loss": _float(logs.get("loss", math.nan)),
            "validation": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "monitor": self.monitor, "improved": bool(improved), "best": self.best}
        if not self.defer:
            self.sink(self.last_event)


def _improves(value, best, mode):
    """Whether the monitored `value` improves on `best` (None: none yet). NaN
    (an undefined correlation, a diverged model) is worse than any number:
    it is the best only while there is none, and any number improves on it
    (compared as numbers, a NaN best would never be improved on). A NaN
    after a NaN counts as better, so while no epoch has a number the latest
    (most trained) is kept: a validation set too small for a correlation
    kept epoch 1 however long the run."""
    if value is None:
        return False
    if best is None:
        return True
    if math.isnan(value):
        return math.isnan(best)
    if math.isnan(best):
        return True
    return value > best if mode == "max" else value < best


class BestModelKeeper(keras.callbacks.Callback):
    """Calls `save_fn(epoch)` when an epoch improves on the best so far and,
    with `restore_best_weights`, keeps that epoch's weights in memory and
    puts them back when training ends.

    Without a monitored value the first epoch counts as the best so far. A
    resumed run passes `best_epoch`, the best of its earlier epochs (already
    saved): only an epoch that improves on it replaces it. When the run's
    last epoch is the best, the model already holds its weights: no copy is
    taken, and an earlier epoch's is dropped. Fine-tuning keeps no copy at
    all (`restore_best_weights=False`): the best model is on disk and its
    validation scores are kept, and the weights in memory are not used after
    training (a copy is the model's size, 440 MB for BERT-base, held from the
    first improved epoch to the end).
    """

    def __init__(self, save_fn=None, best_epoch=None, restore_best_weights=True):
        super().__init__()
        self.save_fn = save_fn
        self.best_weights = None
        self.best_epoch = best_epoch
        self.restore_best_weights = restore_best_weights

    def on_epoch_end(self, epoch, logs=None):
        if (logs or {}).pop("_improved", False) or self.best_epoch is None:
            last = epoch + 1 >= self.params["epochs"] or bool(self.model.stop_training)
            keep = self.restore_best_weights and not last
            self.best_weights = self.model.get_weights() if keep else None
            self.best_epoch = epoch + 1
            if self.save_fn:
                self.save_fn(epoch + 1)

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class StopWhenStalled(keras.callbacks.Callback):
    """Early stopping: ends training once `patience` epochs have passed since
    the `keeper`'s (a `BestModelKeeper` placed before it) best epoch. The
    best is the one the saved model is, by `_improves` (Keras'
    `EarlyStopping` took a first NaN as a best nothing improves on), and
    it is carried across `--resume` (Keras' count of epochs waited started
    again)."""

    def __init__(self, keeper, patience):
        super().__init__()
        self.keeper = keeper
        self.patience = patience

    def on_epoch_end(self, epoch, logs=None):
        best = self.keeper.best_epoch
        if best is not None and epoch + 1 - best >= self.patience:
            self.model.stop_training = True


class ResumeCheckpoint(keras.callbacks.Callback):
    """After every epoch but the run's last, writes the whole model with its
    optimizer state (`checkpoint/epoch-N/`, see `resume_checkpoints`) and
    `state.json` naming it, so `--resume` continues from the last finished
    epoch.

    After the last epoch (or the one early stopping ends the run at) there
    is nothing left to resume: when training ends, `state.json` records the
    run as finished (`"finished": true` and the planned `epochs`) and the
    previous epoch's checkpoint goes. A checkpoint is the model and AdamW's
    two moments, three times the model's size (MiniLM's 273 MB, BERT-base's
    1.3 GB); writing one took 0.3-2.7 s on the bundled MiniLM. A run killed
    during its last epoch resumes from the epoch before, as any other.
    """

    def __init__(self, folder, extra_state_fn=None):
        super().__init__()
        self.folder = folder
        self.extra_state_fn = extra_state_fn
        self.epochs_done = None

    def _state(self, **fields):
        return {"epochs_done": self.epochs_done, **fields,
                **(self.extra_state_fn() if self.extra_state_fn else {})}

    def on_epoch_end(self, epoch, logs=None):
        from bertdesk.training import resume_checkpoints

        self.epochs_done = epoch + 1
        if self._last_epoch():
            return  # on_train_end records the finished run
        resume_checkpoints.write(self.model, self.folder, f"epoch-{self.epochs_done}",
                                 self._state())

    def on_train_end(self, logs=None):
        from bertdesk.training import resume_checkpoints

        if self.epochs_done is None or not self._last_epoch():
            return  # no epoch ran (a resumed run that had none left)
        self.folder.mkdir(parents=True, exist_ok=True)
        # state.json first: a run stopped between the two still reads as finished
        atomic_write_text(self.folder / resume_checkpoints.STATE, json.dumps(
            self._state(epochs=self.params["epochs"], finished=True), indent=2))
        resume_checkpoints.remove(self.folder)

    def _last_epoch(self):
        return self.epochs_done >= self.params["epochs"] or bool(self.model.stop_training)


class TerminalProgress:
    """An event sink that draws a progress bar on a terminal (stderr)."""

    def __init__(self, stream=None, width=30):
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, event):
        kind = event["event"]
        if kind == "step":
            done = event["step"] / max(1, event["total_steps"])
            bar = "#" * int(done * self.width)
            eta = event["eta_seconds"]
            line = (f"epoch {event['epoch']}/{event['epochs']} [{bar:<{self.width}}] "
                    f"{event['step']}/{event['total_steps']} loss {event['loss']:.4f} "
                    f"lr {event['learning_rate']:.2e} {event['examples_per_second']:.1f} ex/s "
                    f"ETA {_fmt_time(eta)}")
            if self.tty:
                self.stream.write("\r" + line + " " * 4)
            elif event["step"] % max(1, event["total_steps"] // 20) == 0 or done >= 1:
                self.stream.write(line + "\n")
        elif kind == "epoch":
            val = ", ".join(f"{k} {v:.4f}" for k, v in event["validation"].items())
            mark = " (best)" if event["improved"] else ""
            self.stream.write(("\n" if self.tty else "") +
                              f"epoch {event['epoch']}: loss {event['loss']:.4f}; "
                              f"validation: {val}{mark}\n")
        elif kind == "message":
            self.stream.write(event["text"] + "\n")
        self.stream.flush()


def _fmt_time(seconds):
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"
