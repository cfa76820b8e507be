"""Fine-tuning quality and speed: bertdesk vs transformers (and keras-hub) on SST-2.

Both fine-tune the bundled all-MiniLM-L6-v2 checkpoint with the same data,
seed, hyperparameters (AdamW lr/eps/weight decay without decay on LayerNorm
and biases, 10% linear warmup then linear decay, clip 1.0), batch size, max
length and dynamic padding; both score the same held-back slice.

    KERAS_BACKEND=jax .venv/bin/python bench/finetune_quality.py --train 4000 --eval 1000

`--whole-job` times what a user waits for, not the training steps alone:
bertdesk's `run_finetune` (validation, the best model folder and the resume
checkpoint after every epoch) against the transformers loop doing what its
`Trainer` does with `eval_strategy="epoch", save_strategy="epoch",
save_total_limit=1, load_best_model_at_end=True` (a `checkpoint-N` folder
per epoch: `save_pretrained` weights, `optimizer.pt`, `scheduler.pt`; the
best one reloaded at the end), and with `--only keras_hub` against keras-hub's own
`fit` of the same checkpoint (`run_keras_hub`). With `--only`, each in its own process, the
peak resident memory is the job's; bertdesk's process is then set up as its
command line's (`keep_freed_memory`, Keras imported without its JAX and
scikit-learn integrations).
"""

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"


def load_sst2(n_train, n_eval, seed):
    with open(DATA, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    random.Random(seed).shuffle(rows)
    rows = [(t.strip(), l) for t, l in rows if t.strip()]
    return rows[:n_train], rows[n_train:n_train + n_eval]  # disjoint slices


def write_csv(rows, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def run_bertdesk(train_csv, eval_csv, args, out):
    from bertdesk.training.finetune import FinetuneConfig, run_finetune

    cfg = FinetuneConfig(train=str(train_csv), validation=str(eval_csv), output=str(out),
                         model="bundled", epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.lr, max_length=args.max_length, seed=args.seed,
                         bucket=not args.no_bucketing, dynamic_padding=not args.pad_to_max)
    marks = []  # training time only: from each epoch's start to its last step

    def sink(event):
        if event["event"] in ("train_begin", "epoch", "step"):
            marks.append((event["event"], time.perf_counter()))

    start = time.perf_counter()
    result = run_finetune(cfg, sink)
    train_seconds, epoch_start, last_step = 0.0, None, None
    for kind, t in marks:
        if kind in ("train_begin", "epoch"):
            if epoch_start is not None and last_step is not None:
                train_seconds += last_step - epoch_start
            epoch_start, last_step = t, None
        else:
            last_step = t
    return {"accuracy": result["metrics"]["accuracy"], "train_seconds": train_seconds,
            "fit_seconds_with_validation_and_checkpoints": result["train_seconds"],
            "total_seconds": time.perf_counter() - start, "peak_mb": peak_mb()}


def peak_mb():
    """This process's peak resident memory (Linux's VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_transformers(train_rows, eval_rows, args, out=None):
    import shutil

    import torch
    from transformers import (BertForSequenceClassification, BertTokenizerFast,
                              get_linear_schedule_with_warmup)

    import bertdesk

    job_start = time.perf_counter()  # the whole job: loading the model too, as bertdesk's
    torch.manual_seed(args.seed)
    folder = str(bertdesk.bundled_checkpoint())
    tok = BertTokenizerFast.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=2)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
               "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
               "weight_decay": 0.0}]
    # fused, as transformers' Trainer (see bench/speed.py's transformers job)
    opt = torch.optim.AdamW(groups, lr=args.lr, eps=1e-8, fused=True)
    steps_per_epoch = (len(train_rows) + args.batch_size - 1) // args.batch_size
    total = steps_per_epoch * args.epochs
    sched = get_linear_schedule_with_warmup(opt, int(round(0.1 * total)), total)
    texts = [t for t, _ in train_rows]
    labels = torch.tensor([int(l) for _, l in train_rows])

    def batch(ix, source):
        enc = tok([source[i] for i in ix], max_length=args.max_length, truncation=True,
                  padding="longest", return_tensors="pt")
        return enc

    eval_texts = [t for t, _ in eval_rows]

    def evaluate():
        model.eval()
        preds = []
        with torch.no_grad():
            for s in range(0, len(eval_texts), 64):
                preds += model(**batch(range(s, min(s + 64, len(eval_texts))), eval_texts)
                               ).logits.argmax(-1).tolist()
        model.train()
        return float(np.mean([p == int(l) for p, (_, l) in zip(preds, eval_rows)]))

    model.train()
    g = torch.Generator().manual_seed(args.seed)
    train_seconds, best, kept = 0.0, None, []
    for epoch in range(args.epochs):
        epoch_start = time.perf_counter()
        order = torch.randperm(len(texts), generator=g).tolist()
        for s in range(0, len(order), args.batch_size):
            ix = order[s:s + args.batch_size]
            loss = model(**batch(ix, texts), labels=labels[ix]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        train_seconds += time.perf_counter() - epoch_start
        if not args.whole_job:
            continue
        # Trainer's epoch end: evaluate, write checkpoint-N, keep the best and the last
        acc = evaluate()
        folder = out / f"checkpoint-{(epoch + 1) * steps_per_epoch}"
        model.save_pretrained(folder)
        torch.save(opt.state_dict(), folder / "optimizer.pt")
        torch.save(sched.state_dict(), folder / "scheduler.pt")
        if best is None or acc > best[0]:
            best = (acc, folder)
        kept.append(folder)
        for old in kept[:-1]:
            if old != best[1]:
                shutil.rmtree(old)
        kept = [k for k in kept if k.exists()]
    if args.whole_job and best[1] != kept[-1]:  # load_best_model_at_end
        model = BertForSequenceClassification.from_pretrained(best[1])
    acc = evaluate()
    return {"accuracy": acc, "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - job_start, "peak_mb": peak_mb()}


def run_keras_hub(train_rows, eval_rows, args, out):
    """keras-hub's own fine-tuning of the same checkpoint, as its guides do
    it: `BertTextClassifier.from_preset` on the folder (its preprocessor
    tokenizes in `tf.data`, the rows shuffled each epoch, and pads every
    batch to `--max-length`), AdamW
    with the same schedule, clipping and decay exclusions, `fit` with
    validation each epoch, the best weights kept (`ModelCheckpoint`,
    `save_best_only`), a resume backup (`BackupAndRestore`), the best
    reloaded at the end. Keras' default compile (XLA on JAX)."""
    import keras
    import keras_hub

    import bertdesk
    from bertdesk.training.optimization import WarmupLinearDecay

    job_start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    model = keras_hub.models.BertTextClassifier.from_preset(str(bertdesk.bundled_checkpoint()),
                                                            num_classes=2)
    model.preprocessor.sequence_length = args.max_length
    total = -(-len(train_rows) // args.batch_size) * args.epochs
    optimizer = keras.optimizers.AdamW(WarmupLinearDecay(args.lr, int(round(0.1 * total)), total),
                                       weight_decay=0.01, epsilon=1e-8, global_clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["sparse_categorical_accuracy"])
    marks = []  # training time only: from each epoch's start to its last step

    class Marks(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            marks.append([time.perf_counter(), None])

        def on_train_batch_end(self, batch, logs=None):
            marks[-1][1] = time.perf_counter()

    best = str(out / "best.weights.h5")
    out.mkdir(parents=True, exist_ok=True)
    import tensorflow as tf  # keras-hub's preprocessing runs in tf.data on every backend

    x, y = [t for t, _ in train_rows], np.array([int(l) for _, l in train_rows])
    ex, ey = [t for t, _ in eval_rows], np.array([int(l) for _, l in eval_rows])
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(x), seed=args.seed, reshuffle_each_iteration=True).batch(args.batch_size)
    model.fit(train, epochs=args.epochs, validation_data=(ex, ey),
              verbose=0, callbacks=[Marks(), keras.callbacks.BackupAndRestore(str(out / "backup")),
                                    keras.callbacks.ModelCheckpoint(
                                        best, monitor="val_sparse_categorical_accuracy",
                                        mode="max", save_best_only=True, save_weights_only=True)])
    model.load_weights(best)
    predicted = np.argmax(model.predict(ex, batch_size=64, verbose=0), -1)
    return {"accuracy": float(np.mean(predicted == ey)),
            "train_seconds": sum(end - begin for begin, end in marks),
            "total_seconds": time.perf_counter() - job_start, "peak_mb": peak_mb()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--eval", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-bucketing", action="store_true")
    p.add_argument("--pad-to-max", action="store_true",
                   help="bertdesk pads every batch to --max-length (the baseline)")
    p.add_argument("--only", choices=("bertdesk", "transformers", "keras_hub"),
                   help="one job in this process (keras_hub: only this way, on $KERAS_BACKEND)")
    p.add_argument("--whole-job", action="store_true",
                   help="time the whole job: per-epoch validation and checkpoints on both sides")
    p.add_argument("--json-out")
    args = p.parse_args()
    train_rows, eval_rows = load_sst2(args.train, args.eval, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sst2_"))
    write_csv(train_rows, tmp / "train.csv")
    write_csv(eval_rows, tmp / "eval.csv")
    if args.only == "bertdesk":  # its process set up as the command line's (see cli.main)
        from bertdesk.training.allocator import keep_freed_memory

        keep_freed_memory()
    results = {}
    if args.only == "keras_hub":
        import keras

        results["keras_hub"] = run_keras_hub(train_rows, eval_rows, args, tmp / "keras_hub")
        results["keras_hub"]["backend"] = keras.backend.backend()
    elif args.only != "transformers":  # (the transformers job's process loads no Keras)
        from bertdesk.lean_import import import_keras_lean

        keras = import_keras_lean()  # without JAX and scikit-learn, as the command line
        results["bertdesk"] = run_bertdesk(tmp / "train.csv", tmp / "eval.csv", args, tmp / "run")
        results["bertdesk"]["backend"] = keras.backend.backend()
    if args.only in (None, "transformers"):
        results["transformers"] = run_transformers(train_rows, eval_rows, args, tmp / "hf")
    print(f"SST-2: {args.train} train / {args.eval} held-back eval, {args.epochs} epoch(s), "
          f"batch {args.batch_size}, lr {args.lr}, max_length {args.max_length}, "
          f"{os.cpu_count()} CPUs")
    for name, r in results.items():
        print(f"{name:<13} accuracy {100 * r['accuracy']:.2f}  train {r['train_seconds']:.1f}s  "
              f"whole job {r['total_seconds']:.1f}s"
              + (f"  peak {r['peak_mb']:.0f} MB" if args.only else ""))
    if len(results) == 2:
        b, t = results["bertdesk"], results["transformers"]
        print(f"accuracy difference (bertdesk - transformers): "
              f"{100 * (b['accuracy'] - t['accuracy']):+.2f} points; "
              f"speed ratio (transformers time / bertdesk time): "
              f"{t['train_seconds'] / b['train_seconds']:.2f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
