"""The `bertdesk` command line.

    bertdesk demo                              # the README's main job: fine-tune
    bertdesk finetune --task classify --train FILE --model PRESET_OR_FOLDER --output DIR
    bertdesk evaluate --model DIR --data FILE [--metrics-out FILE.json]
    bertdesk predict  --model DIR --data FILE --output FILE(.csv|.jsonl)
    bertdesk encode                            # sentence similarities with the bundled BERT
    bertdesk convert SRC DST --to hf|bertdesk  # checkpoint conversion
    bertdesk info FOLDER                       # what a checkpoint holds
    bertdesk vocab --corpus FILE... --vocab-size N --output vocab.txt [--cased]
    bertdesk pretraining-data --corpus FILE... --vocab vocab.txt --output DATA_DIR
    bertdesk pretrain --corpus FILE... [--vocab vocab.txt] --preset tiny --output DIR
    bertdesk gui                               # the desktop app

`--backend` picks the Keras backend; it must be set before Keras is imported,
so this module imports nothing heavy at the top.
"""

import argparse
import json
import math
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")


DEFAULT_BACKEND = "torch"  # fastest fine-tuning measured on CPU (README, bench/)
# Commands that run a model. They keep XLA's compiled programs on disk for the
# next run (bertdesk/training/compile_cache.py) and, when they start the
# process's backend, freed memory for the next step (training/allocator.py).
MODEL_JOBS = ("demo", "finetune", "evaluate", "predict", "encode", "pretrain")


def _chosen_backend(backend):
    """--backend, else $KERAS_BACKEND, else DEFAULT_BACKEND."""
    return backend or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND


def _set_backend(backend):
    """Pick the Keras backend before Keras is imported: --backend, else
    $KERAS_BACKEND, else DEFAULT_BACKEND. In a process that already imported
    Keras (tests, notebooks) the loaded backend stays, unless --backend asks
    for another, which is an error."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" in sys.modules:
        loaded = sys.modules["keras"].backend.backend()
        if backend and backend != loaded:
            raise SystemExit(f"error: Keras is already running on {loaded}, cannot switch to {backend}")
        return
    os.environ["KERAS_BACKEND"] = _chosen_backend(backend)
    from bertdesk.lean_import import import_keras_lean

    import_keras_lean()


def _cmd_convert(args):
    from bertdesk.io import convert

    try:
        out = convert(args.src, args.dst, to=args.to, overwrite=args.overwrite)
    except FileExistsError as e:  # the library's advice names its argument, not the flag
        raise FileExistsError(str(e).replace("overwrite=True", "--overwrite")) from None
    print(f"wrote {args.to} checkpoint to {out}")


def _cmd_info(args):
    from bertdesk.io import read_checkpoint

    ckpt = read_checkpoint(args.folder)
    from bertdesk.io.mapping import IGNORED, tensor_shape

    n = sum(math.prod(tensor_shape(ckpt.tensors, k)) for k in ckpt.tensors
            if not k.startswith(("cls.", "classifier.", "qa_outputs.")) and k not in IGNORED)
    c = ckpt.config
    print(f"folder:  {ckpt.folder}\nformat:  {ckpt.format}\nweights: {ckpt.weights_file.name}")
    print(f"shape:   L{c['num_layers']}/H{c['hidden_dim']}/A{c['num_heads']}/"
          f"FFN{c['intermediate_dim']}, vocab {c['vocabulary_size']}, "
          f"{c.get('max_sequence_length', 512)} positions")
    print(f"params:  {n:,} in the backbone")
    heads = sorted({k.split(".")[1] for k in ckpt.tensors if k.startswith("cls.")})
    print(f"heads:   {', '.join(heads) or 'none'}; task heads: "
          f"{', '.join(ckpt.metadata.get('task_heads', [])) or 'none'}")
    print(f"vocab:   {ckpt.vocab_file or 'none'}")


def _cmd_encode(args):
    import numpy as np

    import bertdesk

    folder = args.model or bertdesk.bundled_checkpoint()
    tokenizer = bertdesk.load_tokenizer(folder)
    backbone = bertdesk.load_backbone(folder)
    sentences = [
        "A man is playing a guitar.",
        "Someone plays an instrument on stage.",
        "The stock market fell sharply today.",
        "Shares dropped as investors panicked.",
        "A cat sleeps on the sofa.",
    ]
    import keras

    batch = tokenizer(sentences, max_length=32, padding="longest")
    out = backbone.predict(batch, verbose=0)
    seq = np.asarray(out["sequence_output"], dtype=np.float32)
    mask = batch["padding_mask"][..., None].astype(np.float32)
    emb = (seq * mask).sum(1) / mask.sum(1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    print(f"backend {keras.backend.backend()}, model {folder}")
    for i, s in enumerate(sentences):
        best = max((j for j in range(len(sentences)) if j != i), key=lambda j: sim[i, j])
        print(f"{s:<40} closest: {sentences[best]!r} (cosine {sim[i, best]:.3f})")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _at_least(minimum):
    """argparse type: a whole number >= `minimum`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value
    return parse


def _count(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _finetune_config(args):
    from bertdesk.training.finetune import FinetuneConfig

    return FinetuneConfig(
        train=args.train, output=args.output, task=args.task, validation=args.validation,
        format=args.format, doc_stride=args.doc_stride,
        max_answer_length=args.max_answer_length,
        text_column=args.text_column, text_pair_column=args.text_pair_column,
        label_column=args.label_column, problem_type=args.problem_type,
        class_weight=args.class_weight,
        label_separator=args.label_separator, model=args.model, epochs=args.epochs,
        batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        max_length=args.max_length, seed=args.seed,
        validation_fraction=args.validation_fraction,
        early_stopping_patience=args.early_stopping_patience,
        mixed_precision=args.mixed_precision, jit_compile=args.jit_compile,
        gradient_checkpointing=args.gradient_checkpointing,
        bucket=False if args.no_bucketing else None, pad_to_multiple=args.pad_to_multiple,
        max_shapes=args.max_shapes,
        null_threshold=args.null_threshold, resume=args.resume)


def _class_weight(text):
    """argparse type for --class-weight: balanced, none, LABEL=WEIGHT pairs
    separated by commas, or a JSON object (for labels with commas)."""
    if text in ("balanced", "none"):
        return None if text == "none" else text
    try:
        if text.lstrip().startswith("{"):
            weights = json.loads(text)
            if not isinstance(weights, dict):
                raise ValueError
        else:
            weights = {}
            for pair in text.split(","):
                label, sep, weight = pair.rpartition("=")
                if not sep or not label.strip():
                    raise ValueError
                weights[label.strip()] = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected balanced, none, LABEL=WEIGHT,... or a JSON object, got {text!r}")
    return weights


def _threshold_arg(allowed):
    """argparse type for --null-threshold: a number or one of `allowed`."""
    def parse(text):
        if text in allowed:
            return text
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(
                f"expected a number or {' or '.join(allowed)}, got {text!r}")
        return value
    return parse


def _apply_null_threshold(model, args):
    """evaluate/predict `--null-threshold`: decide the model's QA answers
    at this threshold (a number: null answers on, also for a model trained
    on SQuAD 1.1 or read from transformers; `none`: always a span)."""
    from bertdesk.data.tables import DataError

    if args.null_threshold is None:
        return
    if model.task != "qa":
        raise DataError(f"{args.model}: --null-threshold applies to extractive QA models; "
                        f"this one is a {model.task} model")
    model.head["null_threshold"] = (None if args.null_threshold == "none"
                                    else args.null_threshold)


def _null_threshold_option(p):
    p.add_argument("--null-threshold", type=_threshold_arg(("none",)),
                   help="qa: answer '' where the null answer's start+end logits beat the best "
                        "span's by more than this (default: the model's own, tuned when it was "
                        "fine-tuned on SQuAD v2; none: always a span)")


def _print_metrics(metrics):
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    width = max(map(len, shown), default=0)
    for key, value in shown.items():
        print(f"  {key:<{width}} {value:.4f}")


def _cmd_finetune(args):
    import json

    import keras

    from bertdesk.data.tables import DataError
    from bertdesk.io.run_folder import within
    from bertdesk.training.callbacks import TerminalProgress
    from bertdesk.training.finetune import run_finetune

    _refuse_writing_over_inputs({"--metrics-out": args.metrics_out},
                                {"--train": args.train, "--validation": args.validation,
                                 "--model": _files_in(args.model)})
    if args.metrics_out and within(args.metrics_out, args.output):
        raise DataError(f"{args.metrics_out}: --metrics-out is inside the run folder "
                        f"{args.output}, whose files the run writes (its metrics.json, the "
                        "model's); choose a path outside it")
    config = _finetune_config(args)

    def write_metrics(result):
        if args.metrics_out:
            from bertdesk.io.atomic import atomic_write_text

            metrics = _public_metrics(result["metrics"])
            atomic_write_text(args.metrics_out, json.dumps(metrics, indent=2, allow_nan=False))

    if args.events == "jsonl":
        # for the desktop app (or any other driver): one JSON object per line on stdout
        sink = JsonLinesEvents(sys.stdout)
        sink({"event": "message", "text": f"fine-tuning on the {keras.backend.backend()} "
                                          f"backend: {config.train} -> {config.output}"})
        result = run_finetune(config, sink)
        sink({"event": "result", "metrics": _public_metrics(result["metrics"]),
              "best_epoch": result["best_epoch"], "model": result["model"],
              "predictions": result["predictions"], "train_seconds": result["train_seconds"]})
        write_metrics(result)  # (it was left out with --events jsonl)
        return
    print(f"fine-tuning on the {keras.backend.backend()} backend: {config.train} -> {config.output}")
    result = run_finetune(config, TerminalProgress())
    print(f"best epoch {result['best_epoch']}; validation metrics:")
    _print_metrics(result["metrics"])
    print(f"model:       {result['model']}\npredictions: {result['predictions']}")
    write_metrics(result)


class JsonLinesEvents:
    """An event sink writing each event as one JSON line, flushed at once."""

    def __init__(self, stream):
        self.stream = stream

    def __call__(self, event):
        self.stream.write(json.dumps(event, default=_json_default) + "\n")
        self.stream.flush()


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _public_metrics(metrics):
    """The metrics `--metrics-out` writes: strict JSON, for other tools (jq,
    JavaScript) refuse a bare NaN, so an undefined metric (Pearson's r of
    constant predictions) is null."""
    import math

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    return {k: finite(v) for k, v in metrics.items() if k != "confusion_matrix"}


def _load_data_for(model, args, require_labels):
    """Read `--data` the way the model was trained to read data, with any
    column or format options given now taking precedence."""
    from bertdesk.training.tasks import get_task

    options = dict(model.meta.get("training_args", {}))
    options["problem_type"] = model.head.get("problem_type")
    for key in ("text_column", "text_pair_column", "label_column", "label_separator", "format"):
        if getattr(args, key, None):
            options[key] = getattr(args, key)
    task = get_task(model.task)
    return task, task.load(args.data, options, require_labels=require_labels)


def _load_for_inference(args):
    """The `--model` folder for evaluate and predict, with `--null-threshold`,
    `--quantize` and `--mixed-precision` applied."""
    from bertdesk.tasks.saving import load_model
    from bertdesk.training.precision import set_precision

    # before the model is built: its layers take the global dtype policy
    set_precision(args.mixed_precision, lambda text: print(text, file=sys.stderr),
                  job="prediction")
    model = load_model(args.model)
    _apply_null_threshold(model, args)
    if args.quantize == "int8":
        from bertdesk.quantization import quantize_int8

        quantize_int8(model.model)
    return model


def _precision_options(p):
    p.add_argument("--quantize", choices=("int8",),
                   help="int8 weights, inputs quantized per token (bertdesk.quantize_int8): a "
                        "quarter of the weights' memory; faster on the PyTorch backend's CPU "
                        "(integer GEMMs), slower on JAX and TensorFlow")
    p.add_argument("--mixed-precision", action="store_true",
                   help="compute in bfloat16 (mixed_bfloat16; the weights stay float32): "
                        "faster where the CPU has bfloat16 instructions (AVX512_BF16, AMX) or "
                        "on a GPU, with a warning where it is slower")


def _cmd_evaluate(args):
    import json

    from bertdesk.io.atomic import atomic_write_text

    _refuse_writing_over_inputs({"--metrics-out": args.metrics_out},
                                {"--data": args.data, "--model": _files_in(args.model)})
    model = _load_for_inference(args)
    task, data = _load_data_for(model, args, require_labels=True)
    task.targets(data, model.head)  # labels the model never saw: a clear error
    scores = task.scores(model.model, model.tokenizer, data, model.head, model.max_length)
    metrics = task.metrics(scores, data, model.head)
    print(f"{args.data}:")
    _print_metrics(metrics)
    if args.metrics_out:
        public = _public_metrics(metrics)
        atomic_write_text(args.metrics_out, json.dumps(public, indent=2, allow_nan=False))
        print(f"metrics written to {args.metrics_out}")


def _cmd_predict(args):
    from bertdesk.training.finetune import check_predictions_path, write_rows

    _refuse_writing_over_inputs({"--output": args.output},
                                {"--data": args.data, "--model": _files_in(args.model)})
    check_predictions_path(args.output)  # before the model is loaded and the data scored
    model = _load_for_inference(args)
    if args.format == "text":
        from bertdesk.data.tables import DataError
        from bertdesk.predictor import Predictor, predict_lines

        columns = [f"--{k.replace('_', '-')}" for k in ("text_column", "text_pair_column",
                                                         "label_column") if getattr(args, k)]
        if columns:
            raise DataError(f"{args.data}: --format text has one text per line and no "
                            f"columns; {', '.join(columns)} applies to tables")

        rows = predict_lines(Predictor(model), args.data)
    else:
        task, data = _load_data_for(model, args, require_labels=False)
        if getattr(args, "label_column", None) and getattr(data, "labels", True) is None:
            from bertdesk.data.tables import DataError

            # asked for by name: a misspelt column was ignored without a word
            raise DataError(f"{args.data}: no label column {args.label_column!r} (given with "
                            "--label-column); leave it out to predict without gold labels")
        scores = task.scores(model.model, model.tokenizer, data, model.head, model.max_length)
        rows = task.rows(scores, data, model.head)
    write_rows(rows, args.output)
    print(f"{len(rows)} predictions written to {args.output}")


def _refuse_writing_over_inputs(outputs, inputs):
    """An output path that is one of the job's input files would replace the
    user's data with the job's results: refused before any work.
    `outputs`, `inputs`: {flag: path, or a list of paths}."""
    import os

    from bertdesk.data.tables import DataError

    def paths(value):
        return [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v]

    for out_flag, out_value in outputs.items():
        for out in paths(out_value):
            if os.path.isdir(out):  # (os.replace failed on it after all the work)
                raise DataError(f"{out}: {out_flag} is a folder; expected the path of a file")
            if not os.path.isfile(out):
                continue
            for in_flag, in_value in inputs.items():
                for source in paths(in_value):
                    if os.path.exists(source) and os.path.samefile(out, source):
                        raise DataError(f"{out}: {out_flag} is the {in_flag} file {source}, and "
                                        "writing it would replace the data; choose another path")


def _files_in(folder):
    """The files a model folder holds (none if it is not a folder)."""
    import os

    if not folder or not os.path.isdir(folder):
        return []
    return [entry.path for entry in os.scandir(folder) if entry.is_file()]


def _cmd_demo(args):
    """The main job: fine-tune the bundled pretrained BERT on the bundled
    English sentiment sample, print validation metrics, write the model and
    its predictions."""
    from pathlib import Path

    assets = Path(__file__).resolve().parent.parent / "assets"
    sample = assets / "sentiment_en.csv"
    if not sample.is_file():
        raise FileNotFoundError(f"{sample}: the bundled sample is missing")
    output = Path(args.output)
    if not args.resume:  # never overwrite an earlier demo run: runs/demo, runs/demo-2, ...
        n = 1
        while output.exists() and any(output.iterdir()):
            n += 1
            output = Path(f"{args.output}-{n}")
    argv = ["finetune", "--task", "classify", "--train", str(sample), "--model", "bundled",
            "--output", str(output), "--epochs", "2", "--batch-size", "16", "--max-length", "64",
            "--learning-rate", "1e-4"] + (["--resume"] if args.resume else [])
    fargs = build_parser().parse_args(argv)
    _cmd_finetune(fargs)


def _cmd_vocab(args):
    from pathlib import Path

    from bertdesk.data.tables import DataError
    from bertdesk.io.atomic import atomic_write_text
    from bertdesk.pretraining.vocab import coverage, train_vocabulary

    out = Path(args.output)
    written = [out] if out.suffix == ".txt" else [out / "vocab.txt", out / "tokenizer_config.json"]
    _refuse_writing_over_inputs({"--output": written}, {"--corpus": args.corpus})
    # a folder's vocab.txt, given as the folder or as the file itself
    folder = out if out.suffix != ".txt" else out.parent if out.name == "vocab.txt" else None
    if folder is not None and _holds_a_model(folder):
        raise DataError(f"{folder}: holds a model, whose weights belong to its vocab.txt; write "
                        "the new vocabulary to another --output")
    if folder is not None and (folder / "data.json").is_file():
        raise DataError(f"{folder}: holds pretraining data, whose token ids belong to its "
                        "vocab.txt; write the new vocabulary to another --output")
    tokenizer = train_vocabulary(args.corpus, args.vocab_size, lowercase=not args.cased,
                                 min_frequency=args.min_frequency)
    if out.suffix == ".txt":
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "".join(t + "\n" for t in tokenizer.vocabulary))
    else:  # a folder: vocab.txt + tokenizer_config.json (casing), as a model folder holds
        tokenizer.save(out)
    stats = coverage(tokenizer, args.corpus)
    print(f"{tokenizer.vocabulary_size:,} word pieces ({'cased' if args.cased else 'uncased'}) "
          f"-> {out}; on the corpus: {stats['pieces_per_word']:.2f} pieces per word, "
          f"{100 * stats['unknown_share']:.2f}% of words [UNK]")
    if tokenizer.vocabulary_size > args.vocab_size:
        print(f"(more than --vocab-size {args.vocab_size:,}: every character of the corpus, "
              "and its ## form, is kept)")


def _holds_a_model(folder):
    from bertdesk.io.errors import CheckpointError
    from bertdesk.io.formats import detect_format

    try:
        return folder.is_dir() and bool(detect_format(folder))
    except CheckpointError:
        return False


def _cmd_pretraining_data(args):
    from bertdesk.pretraining.data_writer import DataOptions, create_pretraining_data
    from bertdesk.pretraining.vocab import vocabulary_tokenizer

    tokenizer = vocabulary_tokenizer(args.vocab, args.cased)
    create_pretraining_data(args.corpus, tokenizer, args.output, DataOptions.of(args),
                            workers=args.workers, log=print)
    print(f"-> {args.output}")


class PretrainProgress:
    """Terminal lines for pretraining events (one per logged step)."""

    def __call__(self, event):
        kind = event["event"]
        if kind == "step":
            from bertdesk.training.callbacks import _fmt_time

            print(f"step {event['step']}/{event['total_steps']}  loss {event['loss']:.4f}  "
                  f"mlm acc {event['mlm_accuracy']:.3f}  nsp acc {event['nsp_accuracy']:.3f}  "
                  f"lr {event['learning_rate']:.2e}  {event['tokens_per_second']:,.0f} tok/s  "
                  f"ETA {_fmt_time(event['eta_seconds'])}", flush=True)
        elif kind == "message":
            print(event["text"], flush=True)
        elif kind == "checkpoint":
            print(f"checkpoint at step {event['step']} -> {event['folder']}", flush=True)


def _cmd_pretrain(args):
    from bertdesk.pretraining.distribution import cpu_devices

    cpu_devices(args.cpu_devices)  # before Keras starts its backend
    import keras

    from bertdesk.pretraining.pretrain import PretrainConfig, run_pretrain

    config = PretrainConfig.from_dict(vars(args))
    config.corpus = args.corpus or []
    sink = JsonLinesEvents(sys.stdout) if args.events == "jsonl" else PretrainProgress()
    sink({"event": "message", "text": f"pretraining a {config.preset} BERT on the "
                                      f"{keras.backend.backend()} backend -> {config.output}"})
    result = run_pretrain(config, sink)
    if args.events != "jsonl" and result["history"]:
        last = result["history"][-1]
        print(f"done: {result['steps']} steps in {result['train_seconds']:.0f} s; last masked-LM "
              f"accuracy {last['mlm_accuracy']:.3f}, next-sentence accuracy "
              f"{last['nsp_accuracy']:.3f}; model: {result['model']}")


def _cmd_gui(args):
    # the app lives in bertdesk_gui; bertdesk itself never imports Qt, so the
    # command hands this process over to it
    os.execv(sys.executable, [sys.executable, "-m", "bertdesk_gui", *args.files])


def build_parser():
    parser = argparse.ArgumentParser(prog="bertdesk", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=BACKENDS,
                        help=f"Keras backend (default: $KERAS_BACKEND, else {DEFAULT_BACKEND})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="fine-tune the bundled pretrained BERT on the bundled sample")
    p.add_argument("--output", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("finetune", help="fine-tune a model on a dataset")
    p.add_argument("--task", choices=("classify", "ner", "qa"), default="classify")
    p.add_argument("--format", choices=("conll", "bmes", "squad"),
                   help="ner: CoNLL column file (IOB1/IOB2) or character-per-line BMES/BIO; "
                        "qa: SQuAD v1.1/v2.0 JSON")
    p.add_argument("--doc-stride", type=int, default=128, help="qa: tokens shared by windows")
    p.add_argument("--max-answer-length", type=int, default=30, help="qa: in tokens")
    p.add_argument("--null-threshold", type=_threshold_arg(("auto",)), default="auto",
                   help="qa on SQuAD v2 data: answer '' where the null answer's start+end "
                        "logits beat the best span's by more than this (the reference's "
                        "null_score_diff_threshold); auto (default): the threshold with the "
                        "best F1 on the validation set")
    p.add_argument("--train", required=True, help="CSV, TSV, JSON lines, JSON, Parquet or Excel")
    p.add_argument("--validation", help="validation file (default: stratified split of --train)")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    _column_options(p, defaults=True)
    p.add_argument("--problem-type", choices=("single_label", "multi_label", "regression"),
                   default="single_label")
    p.add_argument("--class-weight", type=_class_weight, metavar="balanced|LABEL=W,...",
                   help="single_label: weigh each example's loss by its label's weight "
                        "(balanced: n / (labels x the label's count), so each label counts "
                        "the same); multi_label: weigh each label's positive examples "
                        "(balanced: its negatives / its positives); unnamed labels weigh 1")
    p.add_argument("--model", default="bundled",
                   help="'bundled' (pretrained MiniLM), a preset (tiny, mini, small, medium, base, "
                        "large) or a folder")
    p.add_argument("--output", required=True, help="run folder (model, predictions, metrics)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gradient-accumulation", type=_positive_int, default=1, metavar="K",
                   help="update once every K batches, from their mean gradient: the update "
                        "batch of K x --batch-size examples in the memory of one batch; an "
                        "epoch's last update takes the batches left (default 1)")
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--early-stopping-patience", type=int)
    p.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer's activations in the backward pass: less "
                        "memory (PyTorch, TensorFlow; not JAX on a CPU), about 1.4x the time "
                        "per step, same numbers")
    p.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--no-bucketing", action="store_true",
                   help="do not group similar lengths (classification buckets by default, NER not)")
    p.add_argument("--pad-to-multiple", type=_positive_int, metavar="N",
                   help="round each batch's length up to a multiple of N (default 8 where "
                        "the step is compiled: JAX, or --jit-compile on; else 1)")
    p.add_argument("--max-shapes", type=_count, metavar="N",
                   help="use at most N batch lengths, chosen from the data for the least "
                        "padding (default 8 where the step is compiled, else no limit; 0: no "
                        "limit): each length is one more compile of a compiled step")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument("--metrics-out", help="also write validation metrics as JSON here")
    p.add_argument("--events", choices=("bar", "jsonl"), default="bar",
                   help="progress as a terminal bar (default) or JSON lines on stdout")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="evaluate a fine-tuned model on labelled data")
    p.add_argument("--model", required=True, help="fine-tuned model folder (RUN/model)")
    p.add_argument("--data", required=True)
    _column_options(p, defaults=False)
    p.add_argument("--metrics-out", help="write metrics as JSON")
    p.add_argument("--format", choices=("conll", "bmes", "squad"), help="ner/qa data format")
    _null_threshold_option(p)
    _precision_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict with a fine-tuned model")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True, help="predictions (.csv, .tsv or .jsonl)")
    p.add_argument("--format", choices=("conll", "bmes", "squad", "text"),
                   help="ner/qa data format; text: raw text, one example per line "
                        "(classification and NER)")
    _column_options(p, defaults=False)
    _null_threshold_option(p)
    _precision_options(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("encode", help="sentence similarities with the bundled pretrained BERT")
    p.add_argument("--model", help="checkpoint folder (default: the bundled MiniLM)")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("convert", help="convert a checkpoint folder")
    p.add_argument("src", help="Hugging Face, Google TF, keras-hub or bertdesk folder")
    p.add_argument("dst", help="output folder")
    p.add_argument("--to", choices=("hf", "bertdesk", "google", "keras_hub"), default="bertdesk",
                   help="hf: transformers; google: Google's TF checkpoint layout; keras_hub: "
                        "a keras-hub BertBackbone preset (backbone only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model in an existing folder (its other files stay)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("vocab", help="train a WordPiece vocabulary from raw text")
    p.add_argument("--corpus", nargs="+", required=True, help="UTF-8 text files")
    p.add_argument("--vocab-size", type=_at_least(6), default=30522,
                   help="pieces wanted (the specials and every character of the corpus are "
                        "kept even past it)")
    p.add_argument("--output", required=True, help="vocab.txt, or a folder (vocab.txt + config)")
    p.add_argument("--cased", action="store_true", help="keep case and accents")
    p.add_argument("--min-frequency", type=_count, default=2,
                   help="merges seen fewer times are dropped")
    p.set_defaults(func=_cmd_vocab)

    p = sub.add_parser("pretraining-data",
                       help="make masked-LM/next-sentence instances from raw text (sharded)")
    p.add_argument("--corpus", nargs="+", required=True,
                   help="UTF-8 text files: documents separated by blank lines")
    p.add_argument("--vocab", required=True, help="vocab.txt, or a folder with one")
    p.add_argument("--cased", action="store_true", help="with a vocab.txt: keep case")
    p.add_argument("--output", required=True, help="data folder (shards + data.json)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="processes, one shard each at a time")
    _pretraining_data_options(p)
    p.set_defaults(func=_cmd_pretraining_data)

    p = sub.add_parser("pretrain", help="pretrain BERT (masked LM + next sentence) from scratch")
    p.add_argument("--corpus", nargs="+", help="UTF-8 text files (or --data)")
    p.add_argument("--data", help="a folder made by `bertdesk pretraining-data`")
    p.add_argument("--vocab", help="vocab.txt or a folder (default: train one on the corpus)")
    p.add_argument("--vocab-size", type=int, default=8000, help="when training the vocabulary")
    p.add_argument("--cased", action="store_true")
    p.add_argument("--preset", default="tiny", help="architecture: tiny, mini, small, medium, "
                                                    "base, large")
    p.add_argument("--output", required=True, help="model folder (finetune --model accepts it)")
    p.add_argument("--max-steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--gradient-accumulation", type=int, default=1,
                   help="batches per optimizer step (global batch = batch size x this)")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, help="default: 10%% of --max-steps")
    p.add_argument("--optimizer", choices=("adamw", "lamb"), default="adamw")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--mixed-precision", action="store_true", help="mixed_bfloat16")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer's activations in the backward pass: less "
                        "memory (PyTorch, TensorFlow; not JAX on a CPU), about 1.4x the time "
                        "per step, same numbers")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--dropout", type=float, help="override the preset's dropout")
    p.add_argument("--workers", type=int, default=1, help="processes making the data")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument("--distribution", choices=("none", "data", "model"), default="none",
                   help="data/model parallel (JAX keras.distribution; data: also TensorFlow "
                        "MirroredStrategy)")
    p.add_argument("--model-parallel", type=int, default=2, help="devices per model shard")
    p.add_argument("--cpu-devices", type=int, default=0,
                   help="split the CPU into N devices (to try distribution on one machine)")
    p.add_argument("--coordinator", help="host:port of process 0 (multi-process JAX)")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--events", choices=("lines", "jsonl"), default="lines")
    _pretraining_data_options(p, dupe_default=5, masking_default="dynamic")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("gui", help="open the desktop app (same as bertdesk-gui)")
    p.add_argument("files", nargs="*", help="a dataset to open")
    p.set_defaults(func=_cmd_gui)

    p = sub.add_parser("info", help="describe a checkpoint folder")
    p.add_argument("folder")
    p.set_defaults(func=_cmd_info)
    return parser


def _pretraining_data_options(p, dupe_default=10, masking_default="static"):
    p.add_argument("--seq-length", type=int, default=128, help="tokens per sequence pair")
    p.add_argument("--max-predictions-per-seq", type=int, default=20)
    p.add_argument("--masked-lm-prob", type=float, default=0.15)
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    p.add_argument("--dupe-factor", type=int, default=dupe_default,
                   help="passes over the corpus, each with its own sequence pairs (and, "
                   "when static, masks)")
    p.add_argument("--masking", choices=("static", "dynamic"), default=masking_default,
                   help="static: dupe-factor copies masked once; dynamic: a new mask each epoch")
    p.add_argument("--whole-word-mask", action="store_true")
    p.add_argument("--chinese-words", action="store_true",
                   help="whole-word masking: CJK words are separated by spaces in the corpus")
    p.add_argument("--sentences", choices=("split", "line"), default="split",
                   help="split lines into sentences, or one sentence per line")
    p.add_argument("--document-pattern",
                   help="regex: a matching line starts a new document (and is dropped)")
    p.add_argument("--seed", type=int, default=12345 if masking_default == "static" else 0)


def _column_options(p, defaults):
    p.add_argument("--text-column", default="text" if defaults else None)
    p.add_argument("--text-pair-column", default=None)
    p.add_argument("--label-column", default="label" if defaults else None)
    p.add_argument("--label-separator", default="," if defaults else None,
                   help="separates a cell's labels (multi_label)"
                        + ("" if defaults else "; default: the model's training setting"))


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in MODEL_JOBS and "keras" not in sys.modules:
        # Before the backend starts its threads; a process that already runs
        # Keras (tests, notebooks) keeps its allocator as it is.
        from bertdesk.training import allocator

        allocator.keep_freed_memory()
    _set_backend(args.backend)
    if args.command in MODEL_JOBS:
        from bertdesk.layers.cpu_products import check_settings
        from bertdesk.training.compile_cache import enable_compile_cache

        try:
            check_settings()  # a mistyped variable stops here, not at the first product
        except ValueError as e:
            print(f"bertdesk {args.command}: error: {e}", file=sys.stderr)
            return 2
        enable_compile_cache()
    from bertdesk.data.tables import DataError
    from bertdesk.io.errors import CheckpointError

    try:
        args.func(args)
    except (CheckpointError, DataError, FileNotFoundError, FileExistsError, PermissionError,
            NotADirectoryError) as e:
        if getattr(args, "events", None) == "jsonl":
            JsonLinesEvents(sys.stdout)({"event": "error", "text": str(e)})
        print(f"bertdesk {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback of wherever it landed
        output = getattr(args, "output", None) if args.command in ("finetune", "pretrain") else None
        resumable = output and os.path.isfile(os.path.join(output, "checkpoint", "state.json"))
        print(f"bertdesk {args.command}: interrupted"
              + (f"; --resume continues the run in {args.output} from its last checkpoint"
                 if resumable else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
