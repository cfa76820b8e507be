"""Extractive QA quality and speed: bertdesk vs transformers on SQuAD v1.1.

Both fine-tune the bundled all-MiniLM-L6-v2 on whole articles from the start
of `squad/squad_v1.1.part_a.json` and are scored with the official SQuAD
exact match and F1 on whole articles from its end (no article in both), with
the same hyperparameters, windows (max length, document stride) and decoding
limits (n-best 20, longest answer 30 tokens). The transformers side follows
its `run_qa.py` example: its own tokenizer windows (overflowing tokens with a
stride, offset mapping), [CLS] labels for windows without the answer, a
plain training loop, and its n-best post-processing.

    KERAS_BACKEND=torch .venv/bin/python bench/squad_quality.py --train 1500 --eval 500
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "squad" / "squad_v1.1.part_a.json"


def split_articles(n_train, n_eval, dst):
    """Articles from the front until `n_train` questions, from the back until
    `n_eval`; written as two SQuAD files."""
    data = json.loads(DATA.read_text(encoding="utf-8"))
    articles = data["data"]
    count = lambda a: sum(len(p["qas"]) for p in a["paragraphs"])  # noqa: E731
    train, total = [], 0
    for a in articles:
        if total >= n_train:
            break
        train.append(a)
        total += count(a)
    held, total = [], 0
    for a in reversed(articles):
        if total >= n_eval:
            break
        held.insert(0, a)
        total += count(a)
    assert not {a["title"] for a in train} & {a["title"] for a in held}, "articles overlap"
    paths = []
    for name, part in (("train.json", train), ("eval.json", held)):
        (dst / name).write_text(json.dumps({"version": "1.1", "data": part}), encoding="utf-8")
        paths.append(dst / name)
    return paths


def run_bertdesk(train, held, args, out):
    from bertdesk.training.finetune import FinetuneConfig, run_finetune

    marks = []
    cfg = FinetuneConfig(task="qa", format="squad", train=str(train), validation=str(held),
                         output=str(out), model="bundled", epochs=args.epochs,
                         batch_size=args.batch_size, learning_rate=args.lr,
                         max_length=args.max_length, doc_stride=args.doc_stride,
                         seed=args.seed, bucket=args.bucketing)
    result = run_finetune(cfg, lambda e: marks.append((e["event"], time.perf_counter())))
    m = result["metrics"]
    return {"exact_match": m["exact_match"], "f1": m["f1"], "train_seconds": step_time(marks)}


def step_time(marks):
    """Seconds spent in training steps: from train_begin through the last
    step, without the validation and checkpoints between epochs (the first
    step after an epoch boundary counts as a median step)."""
    times = [t for k, t in marks if k == "step"]
    begin = next(t for k, t in marks if k == "train_begin")
    gaps = np.diff([begin] + times)
    firsts, n_steps = set(), 0  # indices of the first step after each epoch event
    for k, _ in marks:
        if k == "step":
            n_steps += 1
        elif k == "epoch" and n_steps < len(times):
            firsts.add(n_steps)
    median = float(np.median(gaps)) if len(gaps) else 0.0
    return float(sum(median if i in firsts else g for i, g in enumerate(gaps)))


def run_transformers(train, held, args):
    import torch
    from transformers import (BertForQuestionAnswering, BertTokenizerFast,
                              get_linear_schedule_with_warmup)

    import bertdesk
    from bertdesk.data.squad import read_squad, squad_metrics

    tr, va = read_squad(train), read_squad(held)
    torch.manual_seed(args.seed)
    folder = str(bertdesk.bundled_checkpoint())
    tok = BertTokenizerFast.from_pretrained(folder)
    model = BertForQuestionAnswering.from_pretrained(folder)

    def windows(examples, with_labels):
        enc = tok([ex.question.lstrip() for ex in examples], [ex.context for ex in examples],
                  truncation="only_second", max_length=args.max_length,
                  stride=args.doc_stride, return_overflowing_tokens=True,
                  return_offsets_mapping=True)
        starts, ends = [], []
        for i, offsets in enumerate(enc["offset_mapping"]):
            seq = enc.sequence_ids(i)
            ex = examples[enc["overflow_to_sample_mapping"][i]]
            s = e = 0
            if with_labels:
                a = ex.answers[0]
                s_char, e_char = a["answer_start"], a["answer_start"] + len(a["text"])
                ctx = [k for k, sid in enumerate(seq) if sid == 1]
                if offsets[ctx[0]][0] <= s_char and offsets[ctx[-1]][1] >= e_char:
                    s = next(k for k in ctx if offsets[k][1] > s_char)
                    e = [k for k in ctx if offsets[k][0] < e_char][-1]
            starts.append(s)
            ends.append(e)
        return enc, starts, ends

    enc, starts, ends = windows(tr.examples, True)
    n = len(enc["input_ids"])
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for name, p in model.named_parameters()
                          if not name.endswith(no_decay)], "weight_decay": 0.01},
              {"params": [p for name, p in model.named_parameters()
                          if name.endswith(no_decay)], "weight_decay": 0.0}]
    # fused, as transformers' Trainer (see bench/speed.py's transformers job)
    opt = torch.optim.AdamW(groups, lr=args.lr, eps=1e-8, fused=True)
    total = (n + args.batch_size - 1) // args.batch_size * args.epochs
    sched = get_linear_schedule_with_warmup(opt, int(round(0.1 * total)), total)

    def batch(ix):
        feats = [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                  "attention_mask": enc["attention_mask"][i]} for i in ix]
        return tok.pad(feats, padding="longest", return_tensors="pt")

    start = time.perf_counter()
    model.train()
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        order = torch.randperm(n, generator=g).tolist()
        for s in range(0, n, args.batch_size):
            ix = order[s:s + args.batch_size]
            out = model(**batch(ix), start_positions=torch.tensor([starts[i] for i in ix]),
                        end_positions=torch.tensor([ends[i] for i in ix]))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
    train_seconds = time.perf_counter() - start

    # run_qa.py's postprocess_qa_predictions: n-best starts x ends per window,
    # inside the context, end >= start, at most max_answer_length tokens
    model.eval()
    enc, _, _ = windows(va.examples, False)
    candidates = {}
    with torch.no_grad():
        for s in range(0, len(enc["input_ids"]), 64):
            ix = list(range(s, min(s + 64, len(enc["input_ids"]))))
            out = model(**batch(ix))
            for row, i in enumerate(ix):
                start_l, end_l = out.start_logits[row].numpy(), out.end_logits[row].numpy()
                offsets, seq = enc["offset_mapping"][i], enc.sequence_ids(i)
                ex = va.examples[enc["overflow_to_sample_mapping"][i]]
                for a in np.argsort(start_l)[-1:-21:-1]:
                    for b in np.argsort(end_l)[-1:-21:-1]:
                        if a >= len(seq) or b >= len(seq) or seq[a] != 1 or seq[b] != 1:
                            continue
                        if b < a or b - a + 1 > 30:
                            continue
                        text = ex.context[offsets[a][0]:offsets[b][1]]
                        candidates.setdefault(ex.id, []).append((start_l[a] + end_l[b], text))
    predictions = {ex.id: max(candidates.get(ex.id, [(0, "")]))[1] for ex in va.examples}
    m = squad_metrics(predictions, va)
    return {"exact_match": m["exact_match"], "f1": m["f1"], "train_seconds": train_seconds}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=int, default=1500, help="questions (whole articles)")
    p.add_argument("--eval", type=int, default=500, help="questions (whole articles)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--doc-stride", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bucketing", action="store_true", help="group similar lengths (default off)")
    p.add_argument("--only", choices=["bertdesk", "transformers"])
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_squad_"))
    train, held = split_articles(args.train, args.eval, tmp)
    import keras

    from bertdesk.data.squad import read_squad

    n_tr, n_va = len(read_squad(train)), len(read_squad(held))
    print(f"SQuAD v1.1 part_a: {n_tr} training questions -> {n_va} held-out questions "
          f"(whole articles), {args.epochs} epoch(s), batch {args.batch_size}, lr {args.lr}, "
          f"max length {args.max_length}, stride {args.doc_stride}", flush=True)
    rows = {}
    if args.only != "transformers":
        rows[f"bertdesk ({keras.backend.backend()})"] = run_bertdesk(train, held, args, tmp / "run")
    if args.only != "bertdesk":
        rows["transformers"] = run_transformers(train, held, args)
    for name, r in rows.items():
        print(f"{name:<22} EM {r['exact_match']:.2f}  F1 {r['f1']:.2f}  "
              f"train {r['train_seconds']:.0f}s")
    if len(rows) == 2:
        b, t = rows.values()
        print(f"F1 difference {b['f1'] - t['f1']:+.2f} points; speed ratio "
              f"{t['train_seconds'] / b['train_seconds']:.2f}x")


if __name__ == "__main__":
    main()
