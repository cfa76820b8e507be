"""From raw text to a fine-tuned classifier, measured.

1. A WordPiece vocabulary trained on `../shared/data/corpus` (WikiText-2 test
   and Tiny Shakespeare; WikiText articles split at their ` = Title = `
   lines). Tiny Shakespeare separates every speech with a blank line, which
   would make each speech a document (two lines on average: 69% of each
   128-token sequence would be padding); the demo writes a copy into its
   work folder with the blank lines dropped and a document break every 100
   lines instead.
2. Masked-LM + next-sentence pretraining of a small BERT on it for
   `--max-steps` steps (dynamic masking, AdamW, warmup then linear decay),
   printing masked-LM and next-sentence accuracy over training.
3. The pretrained checkpoint and the same architecture from random
   initialisation, each fine-tuned on the same SST-2 sample (from
   `sst2/train.tsv`, scored on a disjoint held-back slice of it) with the
   same hyperparameters and several fine-tuning seeds: the pretrained one
   should score higher.

    KERAS_BACKEND=tensorflow .venv/bin/python bench/pretrain_demo.py --max-steps 5000
"""

import argparse
import csv
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CORPUS = [SHARED / "corpus" / "wikitext2.test.raw", SHARED / "corpus" / "tinyshakespeare.txt"]
SST2 = SHARED / "sst2" / "train.tsv"


def shakespeare_documents(dst, lines_per_document=100):
    """Tiny Shakespeare without its blank line between speeches, a document
    break every `lines_per_document` lines instead."""
    lines = [x for x in CORPUS[1].read_text(encoding="utf-8").splitlines() if x.strip()]
    path = dst / "tinyshakespeare.documents.txt"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(0, len(lines), lines_per_document):
            f.write("\n".join(lines[i:i + lines_per_document]) + "\n\n")
    return path


def sst2_sample(n_train, n_eval, seed, dst):
    with open(SST2, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    random.Random(seed).shuffle(rows)
    rows = [(t.strip(), lab) for t, lab in rows if t.strip()]
    paths = []
    for name, part in (("train.csv", rows[:n_train]),
                       ("eval.csv", rows[n_train:n_train + n_eval])):
        with open(dst / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(part)
        paths.append(dst / name)
    return paths


def finetune(model_folder, train, held, out, args, seed):
    from bertdesk.training.finetune import FinetuneConfig, run_finetune

    cfg = FinetuneConfig(train=str(train), validation=str(held), output=str(out),
                         model=str(model_folder), epochs=args.ft_epochs, batch_size=32,
                         learning_rate=args.ft_lr, max_length=64, seed=seed)
    r = run_finetune(cfg)
    shutil.rmtree(out, ignore_errors=True)
    return r["metrics"]["accuracy"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.0,
                   help="pretraining dropout (the exported model keeps the preset's 0.1)")
    p.add_argument("--sst2-train", type=int, default=4000)
    p.add_argument("--sst2-eval", type=int, default=1000)
    p.add_argument("--ft-epochs", type=int, default=4)
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--ft-seeds", default="0,1,2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()

    import keras

    import bertdesk
    from bertdesk.pretraining.pretrain import PretrainConfig, run_pretrain

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_pretrain_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"backend {keras.backend.backend()}; runs in {work}", flush=True)

    # === Pretraining ===
    corpus = [CORPUS[0], shakespeare_documents(work)]
    cfg = PretrainConfig(output=str(work / "pretrained"), corpus=[str(c) for c in corpus],
                         vocab_size=args.vocab_size, preset=args.preset,
                         max_steps=args.max_steps, batch_size=args.batch_size,
                         seq_length=args.seq_length, learning_rate=args.lr, seed=args.seed,
                         dropout=args.dropout,
                         document_pattern=r"^ = [^=].* = $", masking="dynamic", workers=2,
                         save_every=args.max_steps, log_every=max(1, args.max_steps // 30))

    def sink(event):
        if event["event"] == "message":
            print(event["text"], flush=True)
        elif event["event"] == "step":
            print(f"step {event['step']:>5}  loss {event['loss']:.3f}  masked-LM acc "
                  f"{event['mlm_accuracy']:.3f}  next-sentence acc {event['nsp_accuracy']:.3f}  "
                  f"{event['tokens_per_second']:,.0f} tokens/s", flush=True)

    start = time.perf_counter()
    result = run_pretrain(cfg, sink)
    wall = time.perf_counter() - start
    history = result["history"]
    first, last = history[0], history[-1]
    peak = max(h["mlm_accuracy"] for h in history)

    # === Fine-tuning: pretrained vs random initialisation ===
    tokenizer = bertdesk.load_tokenizer(work / "pretrained")
    random_folder = work / "random_init"
    backbone = bertdesk.BertBackbone.from_preset(
        args.preset, vocabulary_size=tokenizer.vocabulary_size,
        max_sequence_length=max(args.seq_length, 512))
    bertdesk.save_pretrained(backbone, random_folder, tokenizer)
    train, held = sst2_sample(args.sst2_train, args.sst2_eval, args.seed, work)
    seeds = [int(x) for x in args.ft_seeds.split(",")]
    acc_pre = [finetune(work / "pretrained", train, held, work / "ft", args, s) for s in seeds]
    acc_rand = [finetune(random_folder, train, held, work / "ft", args, s) for s in seeds]

    summary = {
        "backend": keras.backend.backend(), "preset": args.preset,
        "vocabulary": tokenizer.vocabulary_size, "steps": args.max_steps,
        "batch": args.batch_size, "seq_length": args.seq_length,
        "instances": result["instances"], "pretrain_seconds": result["train_seconds"],
        "pretrain_wall_seconds_incl_vocab_and_data": wall,
        "tokens_per_second": result["tokens_per_second"],
        "positions_per_second": result["positions_per_second"],
        "padding_fraction": result["padding_fraction"],
        "mlm_accuracy_first_window": first["mlm_accuracy"],
        "mlm_accuracy_last_window": last["mlm_accuracy"], "mlm_accuracy_peak": peak,
        "nsp_accuracy_first_window": first["nsp_accuracy"],
        "nsp_accuracy_last_window": last["nsp_accuracy"],
        "sst2_train": args.sst2_train, "sst2_eval": args.sst2_eval,
        "finetune_seeds": seeds, "finetune_lr": args.ft_lr,
        "sst2_accuracy_pretrained": acc_pre, "sst2_accuracy_random_init": acc_rand}
    print(json.dumps(summary, indent=2))
    print(f"masked-LM accuracy {first['mlm_accuracy']:.3f} -> {last['mlm_accuracy']:.3f} in "
          f"{args.max_steps} steps ({result['train_seconds']:.0f} s, "
          f"{result['tokens_per_second']:,.0f} tokens/s); SST-2 accuracy over {len(seeds)} "
          f"fine-tuning seeds: pretrained {mean(acc_pre):.4f} vs random init {mean(acc_rand):.4f}")


if __name__ == "__main__":
    main()
