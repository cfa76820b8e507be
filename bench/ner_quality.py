"""NER quality and speed: bertdesk vs transformers on CoNLL-2003 (IOB1 -> IOB2).

Both fine-tune the bundled all-MiniLM-L6-v2 on the first N sentences of
eng.train and score entity-level F1 (strict, seqeval's definition) on the
first M sentences of eng.testa, with the same hyperparameters, label on the
first word piece, dynamic padding.

    KERAS_BACKEND=torch .venv/bin/python bench/ner_quality.py --train 3000 --eval 1000
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "conll2003"


def write_subset(src, n, dst):
    blocks = [b for b in src.read_text(encoding="utf-8").split("\n\n")
              if b.strip() and not b.startswith("-DOCSTART-")]
    dst.write_text("\n\n".join(blocks[:n]) + "\n", encoding="utf-8")


def run_bertdesk(train, val, args, out):
    from bertdesk.training.finetune import FinetuneConfig, run_finetune

    marks = []
    cfg = FinetuneConfig(task="ner", format="conll", train=str(train), validation=str(val),
                         output=str(out), model="bundled", epochs=args.epochs,
                         batch_size=args.batch_size, learning_rate=args.lr,
                         max_length=args.max_length, seed=args.seed,
                         bucket=args.bucketing, bucket_batches=args.bucket_batches)
    result = run_finetune(cfg, lambda e: marks.append((e["event"], time.perf_counter())))
    begin = next(t for k, t in marks if k == "train_begin")
    last = max(t for k, t in marks if k == "step")
    return {"f1": result["metrics"]["f1"], "train_seconds": last - begin}


def run_transformers(train, val, args):
    import torch
    from transformers import (BertForTokenClassification, BertTokenizerFast,
                              get_linear_schedule_with_warmup)

    import bertdesk
    from bertdesk.data.ner import entity_metrics, read_conll

    tr, va = read_conll(train), read_conll(val)
    labels = ["O"] + [f"{p}-{k}" for k in sorted({t[2:] for s in tr.tags for t in s if t != "O"})
                      for p in ("B", "I")]
    index = {l: i for i, l in enumerate(labels)}
    torch.manual_seed(args.seed)
    folder = str(bertdesk.bundled_checkpoint())
    tok = BertTokenizerFast.from_pretrained(folder)
    model = BertForTokenClassification.from_pretrained(folder, num_labels=len(labels))
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
               "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
               "weight_decay": 0.0}]
    # fused, as transformers' Trainer (see bench/speed.py's transformers job)
    opt = torch.optim.AdamW(groups, lr=args.lr, eps=1e-8, fused=True)
    total = (len(tr.words) + args.batch_size - 1) // args.batch_size * args.epochs
    sched = get_linear_schedule_with_warmup(opt, int(round(0.1 * total)), total)

    def encode(words, tags=None):
        enc = tok(words, is_split_into_words=True, truncation=True, max_length=args.max_length,
                  padding="longest", return_tensors="pt")
        if tags is None:
            return enc, None
        y = torch.full(enc["input_ids"].shape, -100)
        for i in range(len(words)):
            prev = None
            for pos, w in enumerate(enc.word_ids(i)):
                if w is not None and w != prev:
                    y[i, pos] = index[tags[i][w]]
                prev = w
        return enc, y

    start = time.perf_counter()
    model.train()
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        order = torch.randperm(len(tr.words), generator=g).tolist()
        for s in range(0, len(order), args.batch_size):
            ix = order[s:s + args.batch_size]
            enc, y = encode([tr.words[i] for i in ix], [tr.tags[i] for i in ix])
            model(**enc, labels=y).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
    train_seconds = time.perf_counter() - start
    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(va.words), 64):
            words = va.words[s:s + 64]
            enc, _ = encode(words)
            logits = model(**enc).logits.numpy()
            for i, w in enumerate(words):
                tags, prev = ["O"] * len(w), None
                for pos, wid in enumerate(enc.word_ids(i)):
                    if wid is not None and wid != prev:
                        tags[wid] = labels[int(np.argmax(logits[i, pos]))]
                    prev = wid
                preds.append(tags)
    return {"f1": entity_metrics(va.tags, preds)["f1"], "train_seconds": train_seconds}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--eval", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bucketing", action="store_true", help="group similar lengths (off by default for NER)")
    p.add_argument("--bucket-batches", type=int, default=50)
    p.add_argument("--only-bertdesk", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_conll_"))
    write_subset(DATA / "eng.train", args.train, tmp / "train.conll")
    write_subset(DATA / "eng.testa", args.eval, tmp / "val.conll")
    import keras

    b = run_bertdesk(tmp / "train.conll", tmp / "val.conll", args, tmp / "run")
    if args.only_bertdesk:
        print(f"bertdesk entity F1 {100 * b['f1']:.2f}  train {b['train_seconds']:.0f}s")
        return
    t = run_transformers(tmp / "train.conll", tmp / "val.conll", args)
    print(f"CoNLL-2003: {args.train} eng.train sentences -> {args.eval} eng.testa sentences, "
          f"{args.epochs} epoch(s), batch {args.batch_size}, lr {args.lr}")
    print(f"bertdesk ({keras.backend.backend()}) entity F1 {100 * b['f1']:.2f}  "
          f"train {b['train_seconds']:.0f}s")
    print(f"transformers       entity F1 {100 * t['f1']:.2f}  train {t['train_seconds']:.0f}s")
    print(f"F1 difference {100 * (b['f1'] - t['f1']):+.2f} points; speed ratio "
          f"{t['train_seconds'] / b['train_seconds']:.2f}x")


if __name__ == "__main__":
    main()
