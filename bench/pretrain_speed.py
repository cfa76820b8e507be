"""Pretraining throughput: bertdesk vs keras-hub's BertMaskedLM vs
transformers' BertForPreTraining, same shape, same machine, one run.

Every (implementation, backend) is a job in its own process (Keras reads its
backend once per process). Each builds its pretraining model with random
weights at the same shape (default: the `tiny` preset, 30,522 word pieces,
batch 32 x 128 tokens, 20 masked positions per sequence), takes `--warmup`
AdamW training steps, then times `--steps` more, and reports tokens/s
(batch x sequence length per step) and the ratio to the best peer.

Heads differ by design and are reported as they are: bertdesk (MLM at the
masked positions + NSP) and keras-hub's BertMaskedLM (MLM at the masked
positions, no NSP head) compute vocabulary logits only where tokens are
masked; transformers' BertForPreTraining computes them at every position.

    .venv/bin/python bench/pretrain_speed.py --shape tiny
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = [("bertdesk", "jax"), ("bertdesk", "tensorflow"), ("bertdesk", "torch"),
        ("keras_hub", "jax"), ("keras_hub", "tensorflow"), ("keras_hub", "torch"),
        ("transformers", "torch")]
VOCAB = 30522


def _shape(name):
    sys.path.insert(0, str(ROOT))
    import bertdesk

    cfg = bertdesk.preset_config(name)
    return {k: cfg[k] for k in ("num_layers", "hidden_dim", "num_heads", "intermediate_dim")}


def _batch(batch, seq, predictions):
    import numpy as np

    rng = np.random.default_rng(0)
    positions = np.sort(np.stack([rng.choice(np.arange(1, seq - 1), predictions, replace=False)
                                  for _ in range(batch)]), axis=1).astype("int32")
    return {"token_ids": rng.integers(1000, VOCAB, (batch, seq)).astype("int32"),
            "segment_ids": (np.arange(seq) >= seq // 2).astype("int32")[None].repeat(batch, 0),
            "padding_mask": np.ones((batch, seq), "int32"),
            "mask_positions": positions,
            "mask_ids": rng.integers(1000, VOCAB, (batch, predictions)).astype("int32"),
            "nsp": rng.integers(0, 2, (batch,)).astype("int32")}


def _timed(step, warmup, steps):
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    first = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps, first


def pretraining_step(impl, shape, batch, seq, predictions, precision="fp32", jit=None):
    """One AdamW pretraining step of `impl` at `shape` as a function of no
    arguments that returns when the step's work is done (on a GPU too).

    Keras implementations take the global dtype policy (set it first, e.g.
    "mixed_bfloat16") and compile with `jit` (None: XLA except on PyTorch);
    transformers runs under autocast for bf16. Runs on the GPU when PyTorch /
    JAX sees one.
    """
    b = _batch(batch, seq, predictions)
    if impl == "transformers":
        import torch
        from transformers import BertConfig, BertForPreTraining

        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)
        config = BertConfig(vocab_size=VOCAB, hidden_size=shape["hidden_dim"],
                            num_hidden_layers=shape["num_layers"],
                            num_attention_heads=shape["num_heads"],
                            intermediate_size=shape["intermediate_dim"])
        model = BertForPreTraining(config).to(device).train()
        # fused, as transformers' Trainer (see bench/speed.py's transformers job)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
        labels = torch.full((batch, seq), -100, dtype=torch.long)
        rows = torch.arange(batch)[:, None]
        labels[rows, torch.from_numpy(b["mask_positions"]).long()] = torch.from_numpy(
            b["mask_ids"]).long()
        inputs = {"input_ids": torch.from_numpy(b["token_ids"]).long(),
                  "token_type_ids": torch.from_numpy(b["segment_ids"]).long(),
                  "attention_mask": torch.from_numpy(b["padding_mask"]).long(),
                  "labels": labels, "next_sentence_label": torch.from_numpy(b["nsp"]).long()}
        inputs = {k: v.to(device) for k, v in inputs.items()}

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()

        return step

    import keras

    x = {k: b[k] for k in ("token_ids", "segment_ids", "padding_mask", "mask_positions")}
    if jit is None:
        jit = keras.backend.backend() != "torch"
    if impl in ("bertdesk", "bertdesk_ckpt"):  # the second with gradient checkpointing
        import bertdesk
        from bertdesk.pretraining.objectives import masked_lm_loss
        from bertdesk.training.optimization import bert_adamw

        model = bertdesk.BertPretrainingModel(bertdesk.BertBackbone(
            vocabulary_size=VOCAB, max_sequence_length=512, **shape,
            gradient_checkpointing=impl == "bertdesk_ckpt"))
        model.compile(optimizer=bert_adamw(1e-4, 1000),
                      loss={"mlm_logits": masked_lm_loss,
                            "nsp_logits": keras.losses.SparseCategoricalCrossentropy(
                                from_logits=True)},
                      jit_compile=jit)
        y = {"mlm_logits": b["mask_ids"], "nsp_logits": b["nsp"]}
    else:
        import keras_hub

        backbone = keras_hub.models.BertBackbone(vocabulary_size=VOCAB, max_sequence_length=512,
                                                 **shape)
        model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
        model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01,
                                                       global_clipnorm=1.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      weighted_metrics=[], jit_compile=jit)  # (its default: an accuracy)
        y = b["mask_ids"]
    # train_on_batch returns the loss as a host number: the step has finished.
    return lambda: model.train_on_batch(x, y)


def job(impl, shape, batch, seq, predictions, warmup, steps):
    step = pretraining_step(impl, shape, batch, seq, predictions)
    return _timed(step, warmup, steps)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="tiny", help="a bertdesk preset name")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--predictions", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--only", help="comma-separated impl:backend jobs")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args()
    shape = _shape(args.shape)
    if args.job:
        impl, _ = args.job.split(":")
        seconds, first = job(impl, shape, args.batch_size, args.seq_length, args.predictions,
                             args.warmup, args.steps)
        print(json.dumps({"seconds": seconds, "first": first}))
        return
    jobs = [tuple(j.split(":")) for j in args.only.split(",")] if args.only else JOBS
    tokens = args.batch_size * args.seq_length
    print(f"pretraining step, {args.shape} {shape}, vocab {VOCAB}, batch {args.batch_size} x "
          f"{args.seq_length} tokens, {args.predictions} masked per sequence, fp32; mean of "
          f"{args.steps} steps after {args.warmup}", flush=True)
    results = {}
    for impl, backend in jobs:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, __file__, "--job", f"{impl}:{backend}", "--shape", args.shape,
               "--batch-size", str(args.batch_size), "--seq-length", str(args.seq_length),
               "--predictions", str(args.predictions), "--warmup", str(args.warmup),
               "--steps", str(args.steps)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((x for x in r.stdout.splitlines() if x.startswith("{")), None)
        if r.returncode or line is None:
            print(f"{impl:<13} {backend:<11} failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        out = json.loads(line)
        results[(impl, backend)] = tokens / out["seconds"]
        print(f"{impl:<13} {backend:<11} {tokens / out['seconds']:>9,.0f} tokens/s  "
              f"({1000 * out['seconds']:.0f} ms/step, warmup {out['first']:.1f} s)", flush=True)
    best = {impl: max((v for (i, _), v in results.items() if i == impl), default=None)
            for impl in ("bertdesk", "keras_hub", "transformers")}
    if best["bertdesk"]:
        for peer in ("keras_hub", "transformers"):
            if best[peer]:
                print(f"bertdesk best / {peer} best: {best['bertdesk'] / best[peer]:.2f}x")


if __name__ == "__main__":
    main()
