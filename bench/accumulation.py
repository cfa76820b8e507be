"""Gradient accumulation: time and memory of an update of B x K examples made
from K batches of B, against one batch of B x K, on PyTorch.

    KERAS_BACKEND=torch .venv/bin/python bench/accumulation.py
    .venv/bin/python bench/accumulation.py --shape base --configs 16x1,8x2,4x4 --repeats 2

Each (implementation, batch x K) runs in its own process (its peak resident
memory is the job's) on a 2-class classifier, random weights and tokens,
seq 128 (bench/speed.py's inputs), and prints the median seconds per update
after warm-up updates, examples/s and peak memory:

- bertdesk: `fit`'s step (`train_on_batch`) K times with `bert_adamw(...,
  gradient_accumulation=K)`: the fused update adds each batch's gradients to
  the accumulators in place and updates from them every K-th batch;
- keras: the same model and optimizer with `fused=False`, so Keras' own
  accumulation and AdamW update run (its generic per-variable update:
  Keras' PyTorch for-each AdamW replaces `keras.optimizers.AdamW` itself,
  not a subclass);
- transformers: `BertForSequenceClassification` with transformers' Trainer's
  loop for K > 1 (each batch's loss / K, backward into the same `.grad`,
  clip, the fused AdamW step, `zero_grad`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from speed import SHAPES, VOCAB, _inputs, peak_resident_mb  # noqa: E402

SEQ = 128
IMPLS = ("bertdesk", "keras", "transformers")


def _keras_update(impl, shape, batch, k):
    import keras

    import bertdesk
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier
    from bertdesk.training.optimization import bert_adamw

    backbone = bertdesk.BertBackbone(vocabulary_size=VOCAB, **SHAPES[shape])
    model = BertTextClassifier(backbone, num_classes=2)
    model.compile(optimizer=bert_adamw(1e-4, 1000, gradient_accumulation=k,
                                       fused=impl == "bertdesk"),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batches = [_inputs(batch, SEQ) for _ in range(k)]

    def update():
        for x, y in batches:
            loss = model.train_on_batch(x, y)  # a host number: the step has finished
        return loss
    return update


def _transformers_update(shape, batch, k):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    s = SHAPES[shape]
    config = BertConfig(vocab_size=VOCAB, hidden_size=s["hidden_dim"],
                        num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
                        intermediate_size=s["intermediate_dim"], num_labels=2)
    model = BertForSequenceClassification(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    batches = []
    for _ in range(k):
        x, y = _inputs(batch, SEQ)
        batches.append(({"input_ids": torch.tensor(x["token_ids"]).long(),
                         "token_type_ids": torch.tensor(x["segment_ids"]).long(),
                         "attention_mask": torch.tensor(x["padding_mask"]).long()},
                        torch.tensor(y).long()))

    def update():
        for x, y in batches:
            (model(**x, labels=y).loss / k).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return update


def worker(args):
    if args.impl != "transformers":
        from bertdesk.lean_import import import_keras_lean

        import_keras_lean()
    update = (_transformers_update(args.shape, args.batch, args.k)
              if args.impl == "transformers"
              else _keras_update(args.impl, args.shape, args.batch, args.k))
    for _ in range(args.warmup):
        update()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        update()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": statistics.median(times), "peak_mb": peak_resident_mb()}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="mini")
    p.add_argument("--configs", default="32x1,16x2,8x4", help="batch x K, comma-separated")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import torch

    print(f"{args.shape} (seq {SEQ}), PyTorch {torch.__version__}, {os.cpu_count()} CPUs; "
          f"median of {args.repeats} updates after {args.warmup}")
    print(f"{'implementation':<14} {'batch x K':>9} {'s/update':>9} {'examples/s':>10} "
          f"{'peak MB':>8}")
    rows = {}
    for config in args.configs.split(","):
        batch, k = map(int, config.lower().split("x"))
        for impl in args.impls.split(","):
            cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--shape", args.shape,
                   "--batch", str(batch), "--k", str(k), "--repeats", str(args.repeats),
                   "--warmup", str(args.warmup)]
            env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode:
                print(f"{impl:<14} {config:>9}  failed: "
                      f"{(out.stderr.strip().splitlines() or ['?'])[-1][:100]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows[impl, config] = r
            print(f"{impl:<14} {config:>9} {r['seconds']:9.3f} "
                  f"{batch * k / r['seconds']:10.1f} {r['peak_mb']:8.0f}", flush=True)
    print("\nbertdesk's speed over each peer's, same batch x K (a peer's seconds per update "
          "over bertdesk's):")
    for config in args.configs.split(","):
        if ("bertdesk", config) not in rows:
            continue
        mine = rows["bertdesk", config]["seconds"]
        ratios = [f"{impl} {rows[impl, config]['seconds'] / mine:.2f}x"
                  for impl in args.impls.split(",")
                  if impl != "bertdesk" and (impl, config) in rows]
        print(f"  {config}: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
