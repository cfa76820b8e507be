"""Fine-tuning, evaluation and prediction for text classification.

One configuration object (`FinetuneConfig`) serves the library, the command
line and the desktop app; progress goes to an event sink (see callbacks.py).
"""

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from bertdesk.data.tables import DataError
from bertdesk.io.atomic import atomic_write_text
from bertdesk.io.formats import read_json
from bertdesk.io.run_folder import (is_leftover, open_run_folder, records_output,
                                    removed_if_left_empty, within)


@dataclass
class FinetuneConfig:
    train: str
    output: str
    task: str = "classify"  # classify | ner | qa
    validation: str | None = None
    format: str | None = None  # ner: conll (default) or bmes
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    problem_type: str = "single_label"  # single_label | multi_label | regression
    # None, "balanced" or {label: weight}: single-label, each class's weight;
    # multi-label, the weight of each label's positive examples
    class_weight: str | dict | None = None
    label_separator: str = ","
    model: str = "bundled"  # "bundled", a preset name, or a checkpoint folder
    epochs: int = 3
    batch_size: int = 32
    gradient_accumulation: int = 1  # batches per update: update batch = batch_size x this
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    seed: int = 0
    validation_fraction: float = 0.1
    early_stopping_patience: int | None = None
    mixed_precision: bool = False
    jit_compile: str = "auto"  # auto | on | off
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory
    bucket: bool | None = None  # group similar lengths; None: on for classify, off for ner
    dynamic_padding: bool = True
    pad_to_multiple: int | None = None  # None: 8 where steps compile per shape, else 1
    max_shapes: int | None = None  # batch lengths at most; 0: no limit; None: 8 where compiled
    bucket_batches: int = 50  # bucketing window, in batches
    doc_stride: int = 128  # qa: tokens shared by consecutive windows of a long context
    max_answer_length: int = 30  # qa: longest answer, in tokens
    # qa, SQuAD v2: "" where the null answer's logits beat the best span's by
    # more than this; "auto": the threshold with the best F1 on the validation set
    null_threshold: str | float = "auto"
    resume: bool = False

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown fine-tuning options: {sorted(unknown)}")
        return cls(**d)


def _natural_key(label):
    """Labels in numeric order where they read as numbers ("2" before "10"),
    then the others by text; equal numbers ("1", "01") and "nan", which
    compares with nothing, by their text, so the order never depends on the
    order the labels were met in (a set's, which changes with the process)."""
    try:
        value = float(label)
    except ValueError:
        value = math.nan
    return (0, value, label) if not math.isnan(value) else (1, 0.0, label)


def resolve_model(spec):
    """(backbone, tokenizer) for "bundled", a preset name or a folder."""
    import bertdesk
    from bertdesk.io import load_backbone, load_tokenizer

    if spec in ("bundled", "minilm"):
        folder = bertdesk.bundled_checkpoint()
        return load_backbone(folder), load_tokenizer(folder)
    if spec in bertdesk.preset_names():
        # A random backbone with BERT's uncased WordPiece vocabulary (30,522).
        tokenizer = load_tokenizer(bertdesk.bundled_checkpoint())
        return (bertdesk.BertBackbone.from_preset(spec, vocabulary_size=tokenizer.vocabulary_size),
                tokenizer)
    if not Path(spec).exists():
        raise DataError(f"--model {spec!r}: not a preset ({', '.join(bertdesk.preset_names())}), "
                        "not 'bundled', and no such folder")
    return load_backbone(spec), load_tokenizer(spec)


def targets_for(data, head):
    kind = head["problem_type"]
    if kind == "regression":
        return np.asarray(data.labels, np.float32)[:, None]
    index = {label: i for i, label in enumerate(head["labels"])}
    if kind == "multi_label":
        y = np.zeros((len(data), len(index)), np.float32)
        for row, (labels, source_row) in enumerate(zip(data.labels, data.rows)):
            for label in labels:
                if label not in index:
                    raise DataError(f"{data.source}: row {source_row}: label {label!r} is not "
                                    f"one the model knows ({', '.join(head['labels'])})")
                y[row, index[label]] = 1
        return y
    y = np.zeros(len(data), np.int32)
    for row, (label, source_row) in enumerate(zip(data.labels, data.rows)):
        if label not in index:
            raise DataError(f"{data.source}: row {source_row}: label {label!r} is not one the "
                            f"model knows ({', '.join(head['labels'])})")
        y[row] = index[label]
    return y


def class_weights_for(train, labels, config):
    """`config.class_weight` as one weight per label (in `labels`' order),
    or None. Single-label: each class's weight; multi-label: the weight of
    each label's positive examples. "balanced" comes from the training
    examples (n / (classes x count); a label's negatives over its
    positives); a {label: weight} mapping gives them (labels it leaves out
    weigh 1)."""
    spec = config.class_weight
    if spec is None or spec == "none":
        return None
    if config.problem_type not in ("single_label", "multi_label"):
        raise DataError(f"--class-weight is for classification (single- or multi-label); this "
                        f"run's problem type is {config.problem_type}")
    if spec == "balanced":
        from bertdesk.tasks.class_weighted_crossentropy import (balanced_class_weights,
                                                                balanced_positive_weights)

        index = {label: i for i, label in enumerate(labels)}
        if config.problem_type == "multi_label":
            targets = np.zeros((len(train), len(labels)))
            for row, example in enumerate(train.labels):
                targets[row, [index[label] for label in example]] = 1
            return balanced_positive_weights(targets)
        return balanced_class_weights([index[label] for label in train.labels], len(labels))
    if not isinstance(spec, dict):
        raise DataError(f"--class-weight {spec!r}: expected 'balanced' or label=weight pairs")
    given = {str(k): v for k, v in spec.items()}
    unknown = sorted(set(given) - set(labels))
    if unknown:
        raise DataError(f"--class-weight: {', '.join(map(repr, unknown))} not among the "
                        f"training data's labels ({', '.join(labels)})")
    weights = []
    for label in labels:
        w = given.get(label, 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < float("inf"):
            raise DataError(f"--class-weight: the weight of {label!r} must be a positive "
                            f"number, got {w!r}")
        weights.append(float(w))
    return weights


def scores_from_logits(logits, head):
    """Probabilities (classification) or values (regression) from logits."""
    if head["problem_type"] == "regression":
        return logits[:, 0]
    if head["problem_type"] == "multi_label":
        return 1 / (1 + np.exp(-logits))
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def compute_metrics(scores, data, head):
    from bertdesk.training import metrics as M

    y = targets_for(data, head)
    if head["problem_type"] == "regression":
        return M.regression_metrics(y[:, 0], scores)
    if head["problem_type"] == "multi_label":
        return M.multilabel_metrics(y, scores >= 0.5, head["labels"])
    return M.classification_metrics(y, scores.argmax(1), head["labels"])


def make_dataset(tokenizer, data, max_length, batch_size, targets=None, shuffle=False, seed=0,
                 bucket=True, dynamic_padding=True, pad_to_multiple=None, bucket_batches=50,
                 max_shapes=None):
    from bertdesk.data.batching import PaddedBatches

    enc, cut = tokenizer.encode_ragged(data.texts, data.pairs, max_length=max_length,
                                       return_cut=True)
    batches = PaddedBatches(enc, targets, batch_size=batch_size, shuffle=shuffle, bucket=bucket,
                            seed=seed, fixed_length=None if dynamic_padding else max_length,
                            pad_to_multiple=pad_to_multiple, bucket_batches=bucket_batches,
                            max_shapes=max_shapes)
    batches.cut = cut  # examples longer than max_length, cut to it
    return batches


def predict_scores(model, tokenizer, data, max_length, head, batch_size=64):
    from bertdesk.data.batching import predict_encodings

    enc = tokenizer.encode_ragged(data.texts, data.pairs, max_length=max_length)
    logits = np.stack(predict_encodings(model, enc, batch_size)) if len(data) else np.zeros((0, 1))
    return scores_from_logits(logits, head)


def prediction_rows(scores, data, head):
    """One dict per example: text(s), prediction, confidence, gold, correct
    (gold and correct None for a row whose label cell is empty)."""
    rows = []
    labels = head.get("labels")
    for i in range(len(data)):
        row = {"row": data.rows[i], "text": data.texts[i]}
        if data.pairs is not None:
            row["text_pair"] = data.pairs[i]
        gold = None if data.labels is None else data.labels[i]  # None: no label in its cell
        if head["problem_type"] == "regression":
            row["prediction"] = float(scores[i])
            if data.labels is not None:
                row["gold"] = None if gold is None else float(gold)
        elif head["problem_type"] == "multi_label":
            chosen = [labels[j] for j in np.flatnonzero(scores[i] >= 0.5)]
            join = getattr(data, "label_separator", ",").join  # as the data's cells read
            row["prediction"] = join(chosen)
            row["confidence"] = float(np.where(scores[i] >= 0.5, scores[i], 1 - scores[i]).min())
            if data.labels is not None:
                row["gold"] = None if gold is None else join(gold)
                row["correct"] = None if gold is None else sorted(chosen) == sorted(gold)
            for k, label in enumerate(labels):  # each label's own probability (a sigmoid)
                row[f"p({label})"] = float(scores[i, k])
        else:
            j = int(scores[i].argmax())
            row["prediction"] = labels[j]
            row["confidence"] = float(scores[i, j])
            if data.labels is not None:
                row["gold"] = gold
                row["correct"] = None if gold is None else labels[j] == gold
            for k, label in enumerate(labels):
                row[f"p({label})"] = float(scores[i, k])
        rows.append(row)
    return rows


PREDICTION_FORMATS = (".csv", ".tsv", ".jsonl")


def check_predictions_path(path):
    """A predictions file's name must say its format; checked before the work."""
    if Path(path).suffix.lower() not in PREDICTION_FORMATS:
        raise DataError(f"{path}: output must end in {', '.join(PREDICTION_FORMATS)}")


def write_rows(rows, path):
    """Predictions as CSV or JSON lines (by extension), written atomically."""
    check_predictions_path(path)
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif path.suffix.lower() == ".tsv":
        # GLUE-style, as bertdesk reads TSV: tabs only, quotes are text, so a
        # cell's own tabs and line breaks become spaces (quoted CSV-style, the
        # file did not read back: "11 fields, the header has 10")
        def cell(value):
            text = "" if value is None else str(value)
            return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")

        names = list(rows[0]) if rows else []
        text = "".join("\t".join(map(cell, line)) + "\n"
                       for line in ([names] + [[r.get(k) for k in names] for r in rows]
                                    if rows else []))
    else:  # .csv
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        text = buf.getvalue()
    atomic_write_text(path, text)
    return path


def _check_same_plan(optimizer, config, total_steps, out):
    """DataError where a resumed run's optimizer (its learning-rate schedule,
    decay and clipping, saved with the checkpoint) is not the one this
    command would build: the checkpoint's would go on regardless, so other
    --epochs, --batch-size or --learning-rate were ignored, the updates past
    its planned end run at a learning rate of 0."""
    from bertdesk.training.optimization import WarmupLinearDecay

    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = optimizer._learning_rate
    if not isinstance(schedule, WarmupLinearDecay):
        return
    planned = [("--learning-rate", float(schedule.peak), config.learning_rate),
               ("--weight-decay", float(optimizer.weight_decay or 0.0), config.weight_decay),
               ("--max-grad-norm", float(optimizer.global_clipnorm or 0.0),
                config.max_grad_norm)]
    for option, started, given in planned:
        if not math.isclose(started, float(given or 0.0), rel_tol=1e-6, abs_tol=1e-12):
            raise DataError(f"{out}: the run was started with {option} {started:g}; resume "
                            f"it with the same (got {given})")
    if int(schedule.total_steps) != total_steps:
        raise DataError(
            f"{out}: the run was planned as {int(schedule.total_steps)} updates; this command "
            f"makes {total_steps} ({config.epochs} epochs of {config.batch_size}-example "
            "batches of its training data): resume it with the same --epochs, --batch-size, "
            "--max-length and training data")


def _best_epoch(state, monitor):
    """A resumed run's best earlier epoch (1-based), or None. A checkpoint
    written before `best_epoch` was kept in it: the first epoch whose
    monitored value is the best one."""
    if "best_epoch" in state:
        return state["best_epoch"]
    best = state.get("best")
    if best is None:
        return None
    return next((i + 1 for i, metrics in enumerate(state.get("history", []))
                 if metrics.get(monitor) == best), None)


def compile_steps(jit_compile):
    """Whether fine-tuning compiles its steps, from `--jit-compile`
    auto|on|off. "auto" compiles on JAX only: TensorFlow's graph without
    XLA and PyTorch's eager steps take every batch length as it comes,
    where XLA and `torch.compile` compile anew (`default_pad_multiple`,
    `default_max_shapes`)."""
    import keras

    return {"on": True, "off": False}.get(jit_compile, keras.backend.backend() == "jax")


def _run_model_folder(path, out):
    """Whether `path` is the `model/` a fine-tuning run into `out` wrote (all
    or part of it): only the files a run writes there, its `bertdesk.json`
    (when present) recording `out` as the run's output."""
    if not path.is_dir() or path.is_symlink():
        return False
    from bertdesk.tasks.saving import TASK_MODEL_FILES

    names = {p.name for p in path.iterdir() if not is_leftover(p.name)}
    if not names <= TASK_MODEL_FILES:
        return False
    if "bertdesk.json" not in names:
        return True
    meta = read_json(path / "bertdesk.json")
    return isinstance(meta, dict) and records_output(meta.get("training_args"), out)


def _inside(spec, folder):
    """Whether the `--model` argument `spec` is a folder in `folder` (or it),
    as `resolve_model` reads it."""
    import bertdesk

    if (not isinstance(spec, (str, Path)) or spec in ("bundled", "minilm")
            or spec in bertdesk.preset_names() or not Path(spec).is_dir()):
        return False
    return within(spec, folder)


def _check_same_labels(out, head):
    """DataError where the labels this data gives are not those of the run
    being resumed (its best model records them): the head's rows would mean
    other labels, and the saved model's label list stop matching its
    weights."""
    saved = out / "model" / "bertdesk.json"
    if not saved.is_file():
        return
    started = (read_json(saved).get("head") or {}).get("labels")
    if started != head.get("labels"):
        raise DataError(f"{out}: the run was started with labels {started}; this data gives "
                        f"{head.get('labels')}: resume it with the same data")


# The settings that decide what a run's examples are (and so its batches
# and steps): a resume must keep them.
_DATA_SETTINGS = ("task", "train", "validation", "format", "text_column", "text_pair_column",
                  "label_column", "label_separator", "problem_type", "max_length",
                  "validation_fraction", "seed", "doc_stride", "max_answer_length")


def _check_same_data(out, config):
    """DataError naming the first data setting (the files, their columns,
    --max-length, the split) that differs from the run being resumed, as its
    best model records them: a finished run was scored on other data and its
    metrics overwritten (an MRPC run "resumed" on RTE), an interrupted one
    went on with other examples, without a word."""
    saved = out / "model" / "bertdesk.json"
    if not saved.is_file():
        return
    started = read_json(saved).get("training_args") or {}
    for name in _DATA_SETTINGS:
        if name not in started or (name == "validation_fraction" and config.validation):
            continue  # (no split where a validation file is given)
        before, now = started[name], getattr(config, name)
        if name in ("train", "validation") and before and now:
            # a path recorded relative to a folder the run was started from: the same
            # file from here where one is there, else (another folder) its name alone
            same = (os.path.realpath(before) == os.path.realpath(now)
                    if os.path.isabs(before) or os.path.exists(before)
                    else os.path.basename(before) == os.path.basename(now))
        else:
            same = before == now
        if not same:
            option = "--" + name.replace("_", "-")
            raise DataError(f"{out}: the run was started with {option} {before}; resume it "
                            f"with the same (got {now})")


def check_settings(config):
    """DataError naming the first setting out of its range, before the run
    folder is touched (an --epochs 0 run wrote no model and said its
    model file was missing; --batch-size 0 failed inside the batching)."""
    from bertdesk.data import settings

    for name in ("epochs", "batch_size", "gradient_accumulation", "doc_stride",
                 "max_answer_length"):
        settings.whole(config, name)
    if config.task == "qa":  # [CLS] question [SEP] context [SEP], a piece of each (a
        # shorter window was a ValueError traceback, the run folder made)
        settings.whole(config, "max_length", 5)
    if config.early_stopping_patience is not None:  # 0: off
        settings.whole(config, "early_stopping_patience", 0)
    settings.number(config, "learning_rate", 0, low_open=True)
    settings.number(config, "weight_decay", 0)
    settings.number(config, "warmup_ratio", 0, 1)
    if config.max_grad_norm is not None:  # None: no clipping
        settings.number(config, "max_grad_norm", 0, low_open=True)
    if not config.validation:  # held out of --train: some of it, never all
        settings.number(config, "validation_fraction", 0, 1, low_open=True, high_open=True)


def _examples(data):
    """How many examples (rows, sentences, questions) a task's data holds."""
    for name in ("words", "examples"):
        if hasattr(data, name):
            return len(getattr(data, name))
    return len(data)


def check_fits(backbone, config):
    """DataError before any training where the inputs would index past the
    model's tables: `max_length` over its learned positions, or text pairs
    (a pair column, QA's question and context) with one segment embedding.
    (An index past an embedding table fails on PyTorch, and on JAX reads
    NaN rows without a word.)"""
    positions = backbone.max_sequence_length
    length = config.max_length
    if isinstance(length, bool) or not isinstance(length, int) or not 3 <= length <= positions:
        raise DataError(f"--max-length {length}: the model {config.model} has {positions} "
                        f"positions; expected a whole number from 3 ([CLS], a piece, [SEP]) "
                        f"to {positions}")
    if (config.text_pair_column or config.task == "qa") and backbone.type_vocabulary_size < 2:
        what = "question and context" if config.task == "qa" else "text pairs"
        raise DataError(f"--model {config.model}: one segment embedding (type_vocab_size 1), "
                        f"and {what} need two; choose a model trained with segments")


def run_finetune(config, sink=None):
    """Fine-tune as `config` says; returns a dict of results (metrics,
    paths, timings). Progress events go to `sink` (a callable). A run that
    fails before it writes anything leaves no output folder behind."""
    with removed_if_left_empty(config.output):
        return _run_finetune(config, sink)


def _run_finetune(config, sink):
    import keras

    from bertdesk.data.batching import default_max_shapes, default_pad_multiple, fit_input
    from bertdesk.tasks.saving import load_model, save_task_model
    from bertdesk.training import resume_checkpoints
    from bertdesk.training.callbacks import (ApplyAccumulated, BestModelKeeper, ProgressEvents,
                                             ResumeCheckpoint, StopWhenStalled,
                                             ValidationCallback)
    from bertdesk.training.optimization import bert_adamw
    from bertdesk.training.precision import set_precision
    from bertdesk.training.seeding import (keep_tensorflow_unloaded, random_state,
                                           set_random_state, set_seed)
    from bertdesk.training.tasks import get_task

    sink = sink or (lambda event: None)
    task = get_task(config.task)
    if task.name != "classify" and config.class_weight not in (None, "none"):
        raise DataError(f"--class-weight is for text classification (--task classify); this "
                        f"is a {task.name} run")
    if task.name != "qa" and str(config.null_threshold) != "auto":
        raise DataError(f"--null-threshold is for extractive QA (--task qa) on SQuAD v2 data; "
                        f"this is a {task.name} run")
    jit = compile_steps(config.jit_compile)
    if config.pad_to_multiple is None:
        config = replace(config, pad_to_multiple=default_pad_multiple(jit))
    if config.max_shapes is None:
        config = replace(config, max_shapes=default_max_shapes(jit))
    if not isinstance(config.max_shapes, int) or config.max_shapes < 0:
        raise DataError(f"max_shapes: expected a whole number >= 1, or 0 for no limit, got "
                        f"{config.max_shapes!r}")
    check_settings(config)
    accumulation = config.gradient_accumulation
    out = Path(config.output)
    # an epoch writes model/ (the best so far), then its checkpoint
    resuming = open_run_folder(out, config.resume, own={
        "model": lambda path: _run_model_folder(path, out)})
    if not resuming and _inside(config.model, out):
        raise DataError(f"--model {config.model}: the model to fine-tune is inside --output "
                        f"{out}, where the run writes its model; choose another --output")
    keep_tensorflow_unloaded()
    set_seed(config.seed)
    set_precision(config.mixed_precision,
                  lambda text: sink({"event": "message", "text": text}))

    # === Data ===
    options = asdict(config)
    train = task.load(config.train, options)
    if config.validation:
        validation = task.load(config.validation, options)
    else:
        train, validation = task.split(train, config.validation_fraction, config.seed)
        if not _examples(validation):  # (a run scored on nothing: accuracy 0, "best")
            raise DataError(f"{config.train}: --validation-fraction {config.validation_fraction} "
                            f"of {_examples(train)} examples holds out none (every label "
                            "needs its examples in training); give a --validation file, "
                            "more data or a larger fraction")
    head = task.make_head(train, config)
    task.targets(validation, head)  # unknown validation labels fail now, not after training
    sink({"event": "message", "text": task.describe(train, validation, head)})

    # === Model ===
    backbone, tokenizer = resolve_model(config.model)
    check_fits(backbone, config)
    train_ds = task.dataset(tokenizer, train, head, config, train=True)
    if getattr(train_ds, "cut", 0):
        unit = "sentences" if task.name == "ner" else "examples"
        sink({"event": "message", "text": (
            f"{train_ds.cut:,} of {len(train_ds.lengths):,} training {unit} are longer than "
            f"--max-length {config.max_length} tokens: cut to it, their ends unseen")})
    steps_per_epoch = len(train_ds)  # batches
    total_steps = -(-steps_per_epoch // accumulation) * config.epochs  # updates
    if accumulation > 1:
        left = steps_per_epoch % accumulation
        sink({"event": "message", "text": (
            f"one update every {accumulation} batches of {config.batch_size} "
            f"({accumulation * config.batch_size} examples"
            + (f"; an epoch's last update takes the {left} left" if left else "")
            + f"): {total_steps} updates in all")})
    state = {}
    if resuming:
        state = resume_checkpoints.read_state(out / "checkpoint")
    finished = bool(state.get("finished"))
    if finished:
        # No checkpoint is kept after the last epoch: nothing to resume; the
        # best model is scored again below. More epochs would be a new run
        # (the learning rate schedule has ended).
        done, planned = int(state["epochs_done"]), int(state.get("epochs", state["epochs_done"]))
        if config.epochs != planned:
            raise DataError(f"{out}: the run finished ({done} of its {planned} epochs"
                            f"{', early stopping' if done < planned else ''}); --resume "
                            f"continues an interrupted run with the same --epochs (got "
                            f"{config.epochs}). To train further, fine-tune its model "
                            f"(--model {out / 'model'}) into a new --output")
        _check_same_data(out, config)
        _check_same_labels(out, head)
        model, initial_epoch = None, done
        sink({"event": "message", "text": f"the run finished after epoch {done}: nothing to "
                                          "resume; scoring its best model"})
    elif resuming:
        model = resume_checkpoints.load(out / "checkpoint", state)
        started = model.optimizer.gradient_accumulation_steps or 1
        if started != accumulation:
            raise DataError(f"{out}: the run was started with --gradient-accumulation "
                            f"{started}; resume it with the same (got {accumulation})")
        _check_same_data(out, config)
        _check_same_plan(model.optimizer, config, total_steps, out)
        _check_same_labels(out, head)
        loss = model.loss.get("logits") if isinstance(model.loss, dict) else model.loss
        for key in ("class_weights", "positive_weights"):
            weighted = getattr(loss, key, None)
            if weighted != head.get(key):
                raise DataError(f"{out}: the run was started with {key.replace('_', ' ')} "
                                f"{weighted}; resume it with the same --class-weight (this "
                                f"one gives {head.get(key)})")
        # This run's choice, not the one saved: a checkpoint written on JAX
        # says jit_compile=True, which on PyTorch would mean torch.compile.
        model.jit_compile = jit
        model.backbone.gradient_checkpointing = config.gradient_checkpointing
        model.backbone.skip_padding = True
        if "random" in state:  # (checkpoints of earlier versions lack it)
            set_random_state(model, state["random"], torch_generator=False)
        initial_epoch = int(state["epochs_done"])
        sink({"event": "message", "text": f"resuming after epoch {initial_epoch}"})
    else:
        model = task.build_model(backbone, head)
        model.backbone.gradient_checkpointing = config.gradient_checkpointing
        # On PyTorch, the padding's share of each step skipped: the losses
        # and metrics never read it (`BertBackbone`'s skip_padding)
        model.backbone.skip_padding = True
        model.compile(optimizer=bert_adamw(config.learning_rate, total_steps, config.warmup_ratio,
                                           config.weight_decay, config.max_grad_norm,
                                           gradient_accumulation=accumulation),
                      loss={"logits": task.loss(head)}, jit_compile=jit)
        initial_epoch = 0
    train_ds.set_epoch(initial_epoch)

    monitor = task.monitor(head)
    history = state.get("history", [])
    training_args = asdict(config)

    scored = {}  # the latest epoch's validation scores, and the best epoch's

    def evaluate():
        scored["latest"] = task.calibrate(
            task.scores(model, tokenizer, validation, head, config.max_length), validation, head)
        metrics = task.metrics(scored["latest"], validation, head)
        history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        return metrics

    def keep_best(epoch):
        save_task_model(model, out / "model", tokenizer, task.name, head, training_args,
                        overwrite=True)
        scored["best"] = scored.get("latest")

    # the epoch event goes out last: when a listener sees it, that epoch's best
    # model and checkpoint are on disk (the app may cancel right after it)
    validator = ValidationCallback(evaluate, sink, monitor, "max", defer=True)
    validator.best = state.get("best")
    keeper = BestModelKeeper(keep_best, best_epoch=_best_epoch(state, monitor),
                             restore_best_weights=False)
    callbacks = [ApplyAccumulated(),  # first: the epoch's every batch before it is evaluated
                 ProgressEvents(sink, steps_per_epoch, config.epochs, config.batch_size,
                                initial_epoch), validator, keeper,
                 ResumeCheckpoint(out / "checkpoint",
                                  lambda: {"best": validator.best, "best_epoch": keeper.best_epoch,
                                           "history": history, "random": random_state(model)}),
                 validator.emit_epoch_event()]
    if resuming and "random" in state:
        # the dropout masks go on from where the interrupted run's stood;
        # Keras' PyTorch `fit` draws from torch's generator as it sets up
        callbacks.insert(0, keras.callbacks.LambdaCallback(
            on_train_begin=lambda logs: set_random_state(model, state["random"])))
    if config.early_stopping_patience:  # after the keeper, which settles the epoch's best
        callbacks.insert(callbacks.index(keeper) + 1,
                         StopWhenStalled(keeper, config.early_stopping_patience))
    start = time.perf_counter()
    if not finished and initial_epoch < config.epochs:
        model.fit(fit_input(train_ds), epochs=config.epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, shuffle=False, verbose=0)  # batches shuffle themselves
    train_seconds = time.perf_counter() - start

    scores = scored.get("best")
    if scores is None:  # the best epoch ran in an earlier, resumed-from run
        best = load_model(out / "model")
        head = best.head  # with what was tuned on its epoch's scores
        scores = task.scores(best.model, best.tokenizer, validation, head, config.max_length)
    # else: the model saved is the one these scores came from, so the
    # validation set is not scored again
    metrics = task.metrics(scores, validation, head)
    write_rows(task.rows(scores, validation, head), out / "validation_predictions.csv")
    result = {"metrics": metrics, "best_epoch": keeper.best_epoch, "history": history,
              "train_seconds": train_seconds, "steps": total_steps,
              "model": str(out / "model"), "predictions": str(out / "validation_predictions.csv")}
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    sink({"event": "train_end", **{k: v for k, v in result.items() if k != "history"}})
    return result
