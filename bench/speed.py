"""Forward and training-step speed: bertdesk vs keras-hub vs transformers.

One command runs every combination in its own process (Keras reads the
backend once per process; peak memory is per job) and prints one table:

    .venv/bin/python bench/speed.py                          # mini and base, fp32 and bf16
    .venv/bin/python bench/speed.py --shapes mini --precisions fp32 --modes train

For each shape (random weights, batch 16, seq 128 by default), precision and
mode (forward = inference; train = forward + backward + AdamW on a
2-class sequence classifier) it measures the median seconds per call over
`--repeats` calls after `--warmup` calls, the first call (compile) time and
the job's peak resident memory, and converts to sequences/s and model FLOPs
utilisation against a GEMM peak measured at the start of the same run.
Ratios are bertdesk's best over each peer's best in the same run.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"mini": dict(num_layers=4, hidden_dim=256, num_heads=4, intermediate_dim=1024),
          "base": dict(num_layers=12, hidden_dim=768, num_heads=12, intermediate_dim=3072),
          "large": dict(num_layers=24, hidden_dim=1024, num_heads=16, intermediate_dim=4096)}
VOCAB = 30522
# (implementation, backend, jit) jobs; transformers is PyTorch eager
JOBS = [("bertdesk", "jax", True), ("bertdesk", "tensorflow", False),
        ("bertdesk", "tensorflow", True), ("bertdesk", "torch", False),
        ("keras_hub", "jax", True), ("keras_hub", "tensorflow", False),
        ("keras_hub", "tensorflow", True), ("keras_hub", "torch", False),
        ("transformers", "torch", False)]


def model_flops(shape, batch, seq, mode):
    """Matmul FLOPs of one call: 2 per multiply-add; training = 3x forward."""
    h, f, n = shape["hidden_dim"], shape["intermediate_dim"], shape["num_layers"]
    tokens = batch * seq
    per_layer = 2 * tokens * (4 * h * h + 2 * h * f) + 2 * 2 * batch * seq * seq * h
    forward = n * per_layer + 2 * batch * h * h  # + pooler
    return forward * (3 if mode == "train" else 1)


def _best_seconds(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm_peak(n=2048):
    """GFLOP/s of n x n matmuls: fp32 is the best of numpy, PyTorch and
    TensorFlow (each links its own BLAS); bf16 through PyTorch (oneDNN)."""
    import numpy as np

    flops = 2 * n ** 3
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    fp32 = {"numpy": flops / _best_seconds(lambda: a @ a) / 1e9}
    out = {"bf16": None}
    try:
        import torch

        t = torch.from_numpy(a)
        fp32["torch"] = flops / _best_seconds(lambda: t @ t) / 1e9
        b = t.to(torch.bfloat16)
        out["bf16"] = flops / _best_seconds(lambda: b @ b) / 1e9
    except ImportError:
        pass
    try:
        import tensorflow as tf

        c = tf.constant(a)
        fp32["tensorflow"] = flops / _best_seconds(lambda: tf.linalg.matmul(c, c).numpy()) / 1e9
    except ImportError:
        pass
    out["fp32"] = max(fp32.values())
    out["fp32_by_library"] = fp32
    return out


# === One job, in its own process ===

def _inputs(batch, seq):
    import numpy as np

    rng = np.random.default_rng(0)
    return ({"token_ids": rng.integers(1000, VOCAB, (batch, seq)).astype("int32"),
             "segment_ids": np.zeros((batch, seq), "int32"),
             "padding_mask": np.ones((batch, seq), "int32")},
            rng.integers(0, 2, (batch,)).astype("int32"))


def _keras_job(impl, shape, mode, jit, batch, seq):
    import keras

    x, y = _inputs(batch, seq)
    if impl == "bertdesk":
        import bertdesk
        from bertdesk.tasks.bert_text_classifier import BertTextClassifier
        from bertdesk.training.optimization import bert_adamw

        backbone = bertdesk.BertBackbone(vocabulary_size=VOCAB, **shape)
        model = (backbone if mode == "forward"
                 else BertTextClassifier(backbone, num_classes=2))
        optimizer = bert_adamw(1e-4, 1000)
    else:
        import keras_hub

        backbone = keras_hub.models.BertBackbone(vocabulary_size=VOCAB, max_sequence_length=512,
                                                 **shape)
        model = (backbone if mode == "forward" else
                 keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=2,
                                                     preprocessor=None))
        optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.01, global_clipnorm=1.0)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    if mode == "forward":
        return lambda: model.predict_on_batch(x)
    return lambda: model.train_on_batch(x, y)


def _transformers_job(shape, mode, precision, batch, seq):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig(vocab_size=VOCAB, hidden_size=shape["hidden_dim"],
                        num_hidden_layers=shape["num_layers"],
                        num_attention_heads=shape["num_heads"],
                        intermediate_size=shape["intermediate_dim"], num_labels=2)
    x, y = _inputs(batch, seq)
    xt = {"input_ids": torch.tensor(x["token_ids"]).long(),
          "token_type_ids": torch.tensor(x["segment_ids"]).long(),
          "attention_mask": torch.tensor(x["padding_mask"]).long()}
    yt = torch.tensor(y).long()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" \
        else (lambda: torch.autocast("cpu", enabled=False))
    if mode == "forward":
        model = BertModel(config).eval()

        def step():
            with torch.no_grad(), autocast():
                model(**xt)
        return step
    model = BertForSequenceClassification(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step():
        with autocast():
            loss = model(**xt, labels=yt).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return step


def worker(args):
    shape = SHAPES[args.shape]
    if args.impl != "transformers":
        # As the command line does (for both Keras implementations): without
        # the JAX and scikit-learn integrations Keras loads when installed.
        from bertdesk.lean_import import import_keras_lean

        keras = import_keras_lean()
        keras.config.set_dtype_policy("mixed_bfloat16" if args.precision == "bf16"
                                      else "float32")
        step = _keras_job(args.impl, shape, args.mode, args.jit, args.batch, args.seq)
    else:
        step = _transformers_job(shape, args.mode, args.precision, args.batch, args.seq)
    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak_mb = peak_resident_mb()
    print("RESULT " + json.dumps({"seconds": statistics.median(times), "first_call": first,
                                  "peak_mb": peak_mb,
                                  "tensorflow_loaded": "tensorflow" in sys.modules}))


def peak_resident_mb():
    """This process's peak resident memory since it started its program.

    Linux's `VmHWM` belongs to the program's own address space; `ru_maxrss`
    does not reset at exec, so a worker started from a driver that has
    loaded TensorFlow and PyTorch would report at least the driver's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# === The driver ===

def run_job(impl, backend, jit, shape, precision, mode, args):
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--shape", shape,
           "--precision", precision, "--mode", mode, "--batch", str(args.batch),
           "--seq", str(args.seq), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if jit:
        cmd.append("--jit")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                             timeout=args.job_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.job_timeout}s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": tail[:120]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="mini,base")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--modes", default="forward,train")
    p.add_argument("--impls", default="bertdesk,keras_hub,transformers")
    p.add_argument("--backends", default="jax,tensorflow,torch")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--job-timeout", type=int, default=900)
    p.add_argument("--json-out", help="also write all results here")
    # worker mode (one job)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    peak = gemm_peak()
    bf16 = f"{peak['bf16']:.0f}" if peak["bf16"] else "n/a"
    libs = ", ".join(f"{k} {v:.0f}" for k, v in peak["fp32_by_library"].items())
    print(f"GEMM peak (2048x2048): fp32 {peak['fp32']:.0f} GFLOP/s ({libs}), bf16 {bf16} "
          f"GFLOP/s (torch); {os.cpu_count()} CPUs; batch {args.batch}, seq {args.seq}, "
          f"median of {args.repeats} after {args.warmup} warm-up calls", flush=True)
    impls, backends = args.impls.split(","), args.backends.split(",")
    results = []
    header = (f"{'shape':<5} {'prec':<4} {'mode':<7} {'implementation':<26} {'seq/s':>8} "
              f"{'MFU':>6} {'first call':>10} {'peak MB':>8}")
    print(header)
    for shape in args.shapes.split(","):
        for precision in args.precisions.split(","):
            for mode in args.modes.split(","):
                flops = model_flops(SHAPES[shape], args.batch, args.seq, mode)
                rows = []
                for impl, backend, jit in JOBS:
                    if impl not in impls or backend not in backends:
                        continue
                    r = run_job(impl, backend, jit, shape, precision, mode, args)
                    name = f"{impl} {backend}" + (" xla" if jit and backend == "tensorflow"
                                                  else "")
                    row = {"shape": shape, "precision": precision, "mode": mode, "impl": impl,
                           "backend": backend, "jit": jit, "name": name, **r}
                    if "seconds" in r:
                        row["seq_per_s"] = args.batch / r["seconds"]
                        ref = peak["bf16"] if precision == "bf16" and peak["bf16"] else peak["fp32"]
                        row["mfu"] = flops / r["seconds"] / (ref * 1e9)
                        print(f"{shape:<5} {precision:<4} {mode:<7} {name:<26} "
                              f"{row['seq_per_s']:>8.1f} {100 * row['mfu']:>5.1f}% "
                              f"{r['first_call']:>9.1f}s {r['peak_mb']:>8.0f}"
                              + ("  (TensorFlow loaded)" if r["tensorflow_loaded"]
                                 and backend != "tensorflow" else ""), flush=True)
                    else:
                        print(f"{shape:<5} {precision:<4} {mode:<7} {name:<26} "
                              f"failed: {r['error']}", flush=True)
                    rows.append(row)
                best = {}
                for row in rows:
                    if "seq_per_s" in row:
                        best[row["impl"]] = max(best.get(row["impl"], 0), row["seq_per_s"])
                if "bertdesk" in best:
                    ratios = ", ".join(f"{best['bertdesk'] / v:.2f}x {k}" for k, v in best.items()
                                       if k != "bertdesk")
                    print(f"      -> bertdesk best {best['bertdesk']:.1f} seq/s: {ratios}",
                          flush=True)
                results.extend(rows)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"gemm_peak": peak, "results": results},
                                                  indent=2))


if __name__ == "__main__":
    main()
