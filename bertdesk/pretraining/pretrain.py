"""BERT pretraining (masked LM + next sentence) from raw text or prepared data.

`run_pretrain(PretrainConfig(...))` makes the data when given a corpus
(training a vocabulary first when none is given), builds a
`BertPretrainingModel` from an architecture preset, and trains it with
`model.fit` on Keras' compiled step: AdamW or LAMB, warmup then linear
decay, Keras' gradient accumulation, optional bfloat16 mixed precision, and
Keras' distribution (data or model parallel on JAX, MirroredStrategy on
TensorFlow; see `distribution.py`).

Every `save_every` optimizer steps the whole model with its optimizer state
is written atomically (`checkpoint/step-N/`, Keras' folder format, then
`checkpoint/state.json` naming it, with the step and the data position;
see `bertdesk.training.resume_checkpoints`), and the output folder is refreshed
as a checkpoint folder (`bertdesk.json`, `model.safetensors` with the MLM
and NSP heads, `vocab.txt`) that `bertdesk finetune --model` accepts.
`resume=True` reloads the last checkpoint and asks the data stream for the
next batch, so a killed run continues at the same step with the same
optimizer state, dropout generator state and data.
"""

import contextlib
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras

from bertdesk.data.tables import DataError
from bertdesk.io.atomic import atomic_write_text
from bertdesk.io.formats import read_json
from bertdesk.io.run_folder import open_run_folder, records_output, removed_if_left_empty


@dataclass
class PretrainConfig:
    output: str
    corpus: list = field(default_factory=list)
    data: str | None = None
    vocab: str | None = None
    vocab_size: int = 8000
    cased: bool = False
    preset: str = "tiny"
    max_steps: int = 1000
    seq_length: int = 128
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_steps: int | None = None  # default: 10% of max_steps
    optimizer: str = "adamw"  # or "lamb"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    gradient_accumulation: int = 1
    mixed_precision: bool = False
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    dropout: float | None = None  # None keeps the preset's
    # data (google-research/bert's create_pretraining_data flags)
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 5
    masking: str = "dynamic"
    whole_word_mask: bool = False
    chinese_words: bool = False
    sentences: str = "split"
    document_pattern: str | None = None
    workers: int = 1
    resume: bool = False
    distribution: str = "none"  # "none", "data", "model"
    model_parallel: int = 2
    coordinator: str | None = None  # "host:port" of process 0 (multi-process JAX)
    num_processes: int = 1
    process_id: int = 0
    jit_compile: str = "auto"
    gradient_checkpointing: bool = False

    @classmethod
    def from_dict(cls, d):
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})

    def check(self):
        if self.optimizer not in ("adamw", "lamb"):
            raise DataError(f"optimizer must be 'adamw' or 'lamb', got {self.optimizer!r}")
        if self.distribution not in ("none", "data", "model"):
            raise DataError(f"distribution must be 'none', 'data' or 'model', "
                             f"got {self.distribution!r}")
        from bertdesk.data import settings
        from bertdesk.models.bert_backbone import preset_names

        for name in ("max_steps", "batch_size", "gradient_accumulation", "save_every",
                     "log_every", "workers", "model_parallel", "num_processes"):
            settings.whole(self, name)
        settings.whole(self, "vocab_size", 6)  # the 5 specials and a piece
        settings.whole(self, "process_id", 0)
        if self.warmup_steps is not None:
            settings.whole(self, "warmup_steps", 0)
        settings.number(self, "learning_rate", 0, low_open=True)
        settings.number(self, "weight_decay", 0)
        settings.number(self, "max_grad_norm", 0, low_open=True)
        if self.dropout is not None:
            settings.number(self, "dropout", 0, 1, high_open=True)
        if self.preset not in preset_names():
            raise DataError(f"--preset {self.preset!r}: expected one of "
                            f"{', '.join(preset_names())}")
        if not self.data:
            from bertdesk.pretraining.data_writer import DataOptions

            DataOptions.of(self).check()  # before the run folder is made
        if not self.data and not self.corpus:
            raise DataError("give --corpus (raw text files) or --data (a folder written by "
                            "`bertdesk pretraining-data`)")
        if self.data and (self.vocab or self.cased):
            # (they were ignored, and recorded in pretraining_args.json as if used)
            given = "--vocab" if self.vocab else "--cased"
            raise DataError(f"{given}: the prepared data {self.data} holds its own vocabulary "
                            "and casing (those `bertdesk pretraining-data` was given); leave "
                            "--vocab and --cased out, or give --corpus")


# === Data ===
def prepare_data(config, out, log):
    """(data folder, tokenizer): `config.data` as it is, or data made from
    `config.corpus` into `out/data` (reused when resuming)."""
    from bertdesk.pretraining.data_writer import DataOptions, create_pretraining_data
    from bertdesk.tokenizer import BertTokenizer

    def existing(folder):
        from bertdesk.pretraining.pretraining_data import read_manifest

        read_manifest(folder / "data.json")  # checked: its format, its vocab.txt
        return folder, BertTokenizer.from_pretrained(folder)  # with the data's own settings

    if config.data:
        folder = Path(config.data)
        if not (folder / "data.json").is_file():
            raise DataError(f"{folder}: no data.json; not a pretraining data folder")
        return existing(folder)
    folder = out / "data"
    if (folder / "data.json").is_file():
        _check_same_data(folder, config)
        return existing(folder)
    if config.vocab:
        from bertdesk.pretraining.vocab import vocabulary_tokenizer

        tokenizer = vocabulary_tokenizer(config.vocab, config.cased)
    else:
        from bertdesk.pretraining.vocab import train_vocabulary

        log(f"training a {config.vocab_size:,}-piece WordPiece vocabulary on the corpus")
        tokenizer = train_vocabulary(config.corpus, config.vocab_size,
                                     lowercase=not config.cased)
    create_pretraining_data(config.corpus, tokenizer, folder, DataOptions.of(config),
                            workers=config.workers, log=log)
    return folder, tokenizer


class StreamBatches(keras.utils.PyDataset):
    """Keras-facing dataset over `PretrainingData`: item `i` is global batch
    `start + i`, or this process's rows of it when several processes share
    the batch (multi-process data parallel)."""

    def __init__(self, data, start, count, process=(0, 1)):
        super().__init__(workers=1, use_multiprocessing=False)
        self.data, self.start, self.count, self.process = data, start, count, process
        self.real_tokens = {}  # item -> non-padding tokens of its global batch

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        inputs, labels = self.data.batch(self.start + i, part=self.process)
        # every process feeds an equal share of rows: its count, scaled, estimates the batch's
        self.real_tokens[i] = int(inputs["padding_mask"].sum()) * self.process[1]
        return inputs, labels

    def pop_real_tokens(self, i):
        return self.real_tokens.pop(i, 0)


# === Model ===
def build_model(config, tokenizer, seq_length, total_steps):
    import bertdesk
    from bertdesk.pretraining.objectives import MaskedAccuracy, masked_lm_loss
    from bertdesk.training.optimization import BertLamb, WarmupLinearDecay, bert_adamw

    overrides = {"vocabulary_size": tokenizer.vocabulary_size}
    preset = bertdesk.preset_config(config.preset)
    overrides["max_sequence_length"] = max(seq_length, preset.get("max_sequence_length", 512))
    if config.dropout is not None:
        overrides.update(dropout=config.dropout, attention_dropout=config.dropout)
    backbone = bertdesk.BertBackbone.from_preset(config.preset, **overrides)
    backbone.gradient_checkpointing = config.gradient_checkpointing
    model = bertdesk.BertPretrainingModel(backbone)
    warmup = config.warmup_steps if config.warmup_steps is not None else total_steps // 10
    accumulation = config.gradient_accumulation if config.gradient_accumulation > 1 else None
    if config.optimizer == "lamb":
        optimizer = BertLamb(WarmupLinearDecay(config.learning_rate, warmup, total_steps),
                             weight_decay=config.weight_decay,
                             global_clipnorm=config.max_grad_norm,
                             gradient_accumulation_steps=accumulation)
    else:
        optimizer = bert_adamw(config.learning_rate, total_steps, None, config.weight_decay,
                               config.max_grad_norm, epsilon=1e-6,
                               gradient_accumulation=config.gradient_accumulation,
                               warmup_steps=warmup)
    model.compile(
        optimizer=optimizer,
        loss={"mlm_logits": masked_lm_loss,
              "nsp_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
        metrics={"mlm_logits": [MaskedAccuracy(name="accuracy")],
                 "nsp_logits": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]},
        jit_compile=_jit_compile(config))
    return model


def _jit_compile(config):
    """Shapes are fixed, so XLA compiles once: on for JAX, and for TensorFlow
    except under MirroredStrategy (where Keras' XLA step fails on mirrored
    variables) and in bfloat16 without a GPU (XLA's CPU code for it runs
    the mini pretraining step at 16.7 sequences/s against TensorFlow's own
    kernels' 39.7, where in float32 it is the faster, 37.9 against 30.0);
    torch.compile takes minutes on a CPU, so PyTorch runs eagerly unless
    asked."""
    backend = keras.backend.backend()
    auto = backend == "jax"
    if backend == "tensorflow":
        auto = config.distribution == "none" and not (
            config.mixed_precision and not _tensorflow_sees_a_gpu())
    return {"on": True, "off": False}.get(config.jit_compile, auto)


def _tensorflow_sees_a_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


# what a resumed run must keep: its batches, its data order, its optimizer
_PLAN = ("preset", "batch_size", "gradient_accumulation", "seed", "learning_rate",
         "warmup_steps", "optimizer", "weight_decay", "max_grad_norm", "dropout")


def _check_same_args(out, config):
    """DataError where a resume changes a setting the run's checkpoint and
    data position depend on (`_PLAN`, as `pretraining_args.json` recorded
    them): another batch size or accumulation restarted the data at the
    wrong batch and counted steps the optimizer did not make, another seed
    another data order; the optimizer settings were kept from the
    checkpoint whatever was given."""
    path = out / "pretraining_args.json"
    if not path.is_file():
        return
    started = read_json(path)
    given = asdict(config)
    differ = [f"--{name.replace('_', '-')} {started[name]!r} (got {given[name]!r})"
              for name in _PLAN if name in started and started[name] != given[name]]
    if differ:
        raise DataError(f"{out}: the run was started with {'; '.join(differ)}: resume it "
                        "with the same")


def _check_same_data(folder, config):
    """DataError where the data a resumed run made from its corpus (`folder`,
    `OUTPUT/data`) was made with other data options or another corpus than
    this command gives: it was reused without a word."""
    from bertdesk.pretraining.data_writer import DataOptions

    made = read_json(folder / "data.json")
    asked = asdict(DataOptions.of(config))
    options = made.get("options") or {}
    differ = [f"{name} {options.get(name)!r} (asked: {value!r})"
              for name, value in asked.items() if name in options and options[name] != value]
    def files(corpus):  # the same files however spelt (one path or several)
        corpus = [corpus] if isinstance(corpus, (str, Path)) else list(corpus or [])
        return [Path(p).resolve() for p in corpus]

    if files(config.corpus) != files(made.get("corpus")):
        differ.append(f"corpus {made.get('corpus')} (asked: {config.corpus})")
    if differ:
        raise DataError(f"{folder}: this run's data was made with {'; '.join(differ)}: resume "
                        "with the same options, or start a new --output")


def _check_same_length(optimizer, config, out):
    """DataError where a resumed run's learning-rate schedule, saved with its
    checkpoint, was planned for another --max-steps: it would run on, past
    its end at a learning rate of 0."""
    from bertdesk.training.optimization import WarmupLinearDecay

    schedule = getattr(getattr(optimizer, "inner_optimizer", optimizer), "_learning_rate", None)
    if isinstance(schedule, WarmupLinearDecay) and schedule.total_steps != config.max_steps:
        raise DataError(f"{out}: the run was planned for --max-steps {schedule.total_steps}; "
                        f"resume it with the same (got {config.max_steps})")


def _rate_of_step(optimizer, step):
    """The learning rate optimizer step `step` (1-based) updated with; the
    optimizer's current one is already the next step's (0 after the last)."""
    rate = getattr(optimizer, "inner_optimizer", optimizer)._learning_rate
    value = rate(step - 1) if callable(rate) else rate
    return float(keras.ops.convert_to_numpy(value))


def _pick(logs, *names):
    for name in names:
        if name in logs:
            return float(logs[name])
    return math.nan


# === Training ===
def run_pretrain(config, sink=None):
    """Pretrain as `config` says; returns a dict of results (history,
    throughput, paths). Progress events go to `sink` (a callable). A run that
    fails before it writes anything leaves no output folder behind (the
    first process's: it makes the folder)."""
    first = config.process_id == 0
    with removed_if_left_empty(config.output) if first else contextlib.nullcontext():
        return _run_pretrain(config, sink)


def _run_pretrain(config, sink):
    from bertdesk.io import save_pretrained
    from bertdesk.pretraining.distribution import (configure_distribution, describe_placement,
                                                   initialize_processes, tensorflow_cpu_devices)
    # registered classes a resumed run's checkpoint names
    from bertdesk import models  # noqa: F401
    from bertdesk.pretraining import objectives  # noqa: F401
    from bertdesk.pretraining.pretraining_data import PretrainingData
    from bertdesk.training import optimization  # noqa: F401
    from bertdesk.training import resume_checkpoints
    from bertdesk.training.precision import set_precision
    from bertdesk.training.seeding import (keep_tensorflow_unloaded, random_state,
                                           set_random_state, set_seed)

    config.check()
    out = Path(config.output)
    state_path = out / "checkpoint" / "state.json"
    resuming = config.resume and state_path.is_file()
    if config.process_id == 0:
        # What a run writes before its first checkpoint: its data, its
        # arguments. Checked before the processes join, so that a refusal
        # stops this one before the others wait on it in a collective.
        open_run_folder(out, config.resume, own={
            "data": lambda path: (path / "data.json").is_file(),  # written whole, data.json last
            "pretraining_args.json": lambda path: records_output(read_json(path), out)})
    if config.num_processes > 1:
        if not config.data:
            raise DataError("a multi-process run reads prepared data: make it once with "
                            "`bertdesk pretraining-data` and pass --data")
        initialize_processes(config.coordinator, config.num_processes, config.process_id)
    if keras.backend.backend() == "tensorflow" and config.distribution != "none":
        tensorflow_cpu_devices()
    sink = sink or (lambda event: None)
    log = lambda text: sink({"event": "message", "text": text})  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    if keras.backend.backend() != "tensorflow" and config.distribution == "none":
        keep_tensorflow_unloaded()
    set_seed(config.seed)
    set_precision(config.mixed_precision, log)

    data_folder, tokenizer = prepare_data(config, out, log)
    scope, process = configure_distribution(config, log, tokenizer.vocabulary_size)
    data = PretrainingData(data_folder, config.batch_size, seed=config.seed,
                           vocabulary=tokenizer.vocabulary)
    if data.seq_length != config.seq_length and not config.data:
        raise DataError(f"{data_folder}: made for sequences of {data.seq_length} tokens, "
                        f"not {config.seq_length}")
    if data.seq_length != config.seq_length:  # --data: made with its own --seq-length
        log(f"{data_folder}: sequences of {data.seq_length} tokens, as the data was made "
            f"(--seq-length {config.seq_length} applies to data made from --corpus)")
        config = replace(config, seq_length=data.seq_length)  # and so recorded
    accumulation = config.gradient_accumulation
    total_batches = config.max_steps * accumulation

    state = {"step": 0, "batches": 0, "history": []}
    with scope():
        if resuming:
            _check_same_args(out, config)
            state = resume_checkpoints.read_state(out / "checkpoint")
            model = resume_checkpoints.load(out / "checkpoint", state)
            # This run's choice, not the saved one (JAX's True would mean
            # torch.compile when resuming on PyTorch).
            model.jit_compile = _jit_compile(config)
            model.backbone.gradient_checkpointing = config.gradient_checkpointing
            set_random_state(model, state["random"], torch_generator=False)
            _check_same_length(model.optimizer, config, out)
            if state["step"] >= config.max_steps:
                log(f"the run finished at step {state['step']}: nothing to resume")
            else:
                log(f"resuming at step {state['step']} (batch {state['batches']})")
        else:
            model = build_model(config, tokenizer, data.seq_length, config.max_steps)
    history = state["history"]
    placement = describe_placement(model) if config.distribution != "none" else None
    if placement:
        log(placement)
    atomic_write_text(out / "pretraining_args.json", json.dumps(asdict(config), indent=2))

    # --dropout is a pretraining setting: the exported model keeps the
    # preset's rates, which is what fine-tuning from it should use.
    finetune_dropout = None
    if config.dropout is not None:
        from bertdesk.models import preset_config

        preset = preset_config(config.preset)
        finetune_dropout = {k: preset[k] for k in ("dropout", "attention_dropout") if k in preset}

    def export(step):
        """Checkpoint (model + optimizer) for --resume, then the model folder.
        Every process does the same conversions (with several JAX processes
        they are collective); only process 0 keeps what it wrote."""
        primary = process[0] == 0
        folder = out / "checkpoint" if primary else Path(tempfile.mkdtemp(prefix=".export."))
        try:
            state = {"step": step, "batches": step * accumulation, "history": history,
                     "random": random_state(model)}
            if primary:
                resume_checkpoints.write(model, folder, f"step-{step}", state)
            else:
                model.save(folder / "checkpoint", zipped=False)
            save_pretrained(model.backbone, out if primary else folder / "model", tokenizer,
                            extra_tensors=model.head_tensors(), overwrite=True,
                            config_overrides=finetune_dropout)
        finally:
            if not primary:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
        sink({"event": "checkpoint", "step": step, "folder": str(out)})

    positions_per_batch = config.batch_size * data.seq_length
    remaining = total_batches - state["batches"]
    dataset = StreamBatches(data, state["batches"], remaining, process)
    counted = {"window": 0, "total": 0}  # real (non-padding) tokens fed

    class Progress(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0 and resuming:
                set_random_state(self.model, state["random"])

        def on_train_begin(self, logs=None):
            self.start = self.window_start = time.perf_counter()
            self.window_batches = 0
            sink({"event": "train_begin", "total_steps": config.max_steps,
                  "initial_step": state["step"], "instances": data.num_instances,
                  "batches_per_epoch": data.batches_per_epoch})

        def on_train_batch_end(self, batch, logs=None):
            batches = state["batches"] + batch + 1
            self.window_batches += 1
            real = dataset.pop_real_tokens(batch)
            counted["window"] += real
            counted["total"] += real
            if batches % accumulation:
                return
            step = batches // accumulation
            if step % config.log_every == 0 or step == config.max_steps:
                now = time.perf_counter()
                elapsed = now - self.window_start
                logs = logs or {}
                opt = self.model.optimizer
                record = {
                    "step": step,
                    "loss": _pick(logs, "loss"),
                    "mlm_loss": _pick(logs, "mlm_logits_loss"),
                    "nsp_loss": _pick(logs, "nsp_logits_loss"),
                    "mlm_accuracy": _pick(logs, "mlm_logits_accuracy"),
                    "nsp_accuracy": _pick(logs, "nsp_logits_accuracy"),
                    "learning_rate": _rate_of_step(opt, step),
                    "tokens_per_second": counted["window"] / elapsed,
                    "positions_per_second": self.window_batches * positions_per_batch / elapsed,
                    # (the stream runs on across epochs: instances read over the data's)
                    "epoch": batches * config.batch_size / data.num_instances,
                }
                history.append(record)
                rate = self.window_batches / accumulation / elapsed
                sink({"event": "step", "total_steps": config.max_steps,
                      "examples_per_second": rate * config.batch_size * accumulation,
                      "elapsed_seconds": now - self.start,
                      "eta_seconds": (config.max_steps - step) / rate if rate else None,
                      **record})
                self.model.reset_metrics()  # the next record covers the next window only
                self.window_start, self.window_batches = time.perf_counter(), 0
                counted["window"] = 0
            if step % config.save_every == 0 and step < config.max_steps:
                self.model  # noqa: B018  (on JAX, fit's state copied back into the variables)
                export(step)

    start = time.perf_counter()
    if remaining > 0:
        model.fit(dataset, epochs=1, callbacks=[Progress()], shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    if remaining > 0:  # (a finished run, resumed, was exported at its end)
        export(config.max_steps)
    result = {"steps": config.max_steps, "history": history, "train_seconds": seconds,
              "tokens_per_second": (counted["total"] / seconds) if remaining else None,
              "positions_per_second": (remaining * positions_per_batch / seconds)
              if remaining else None,
              "padding_fraction": (1 - counted["total"] / (remaining * positions_per_batch))
              if remaining else None,
              "model": str(out), "data": str(data_folder), "instances": data.num_instances}
    if process[0] == 0:
        atomic_write_text(out / "pretraining.json", json.dumps(result, indent=2))
    sink({"event": "train_end", **{k: v for k, v in result.items() if k != "history"}})
    return result
