"""What the backward pass keeps, three ways: autodiff, the hand-written
backward passes of `bertdesk.layers.lean_backward`, and those plus gradient
checkpointing, in a classifier's training step.

For each shape, a 2-class `BertTextClassifier` (dropout 0.1, as BERT trains)
runs AdamW steps on batch 16 x 128 random tokens with the layers as they are
("lean": `dropout_attention`, `feed_forward`), with their autodiff versions
swapped in ("autodiff"; nothing else changes), and as they are with
`gradient_checkpointing=True` ("checkpointed"). Step times alternate between
the models in one process (medians); peak resident memory (`VmHWM`) is
measured with each variant alone in a fresh process, as bench/speed.py does.
Ratios are against the first variant listed.

    KERAS_BACKEND=torch .venv/bin/python bench/lean_backward.py --shapes mini,base
    KERAS_BACKEND=jax .venv/bin/python bench/lean_backward.py --no-memory --variants autodiff,lean
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from speed import SHAPES, _keras_job, peak_resident_mb  # noqa: E402

VARIANTS = ("autodiff", "lean", "checkpointed")


def use_variant(name):
    """Point the layers at the lean ops or at their autodiff versions."""
    from bertdesk.layers import bert_encoder_block, bert_self_attention, lean_backward

    lean = name != "autodiff"
    bert_self_attention.dropout_attention = (
        lean_backward.dropout_attention if lean else lean_backward.autodiff_dropout_attention)
    bert_encoder_block.feed_forward = (
        lean_backward.feed_forward if lean else lean_backward.autodiff_feed_forward)


def training_step(shape, precision, jit, variant, batch=16, seq=128):
    """bench/speed.py's bertdesk training job (classifier, BERT's AdamW)."""
    import keras

    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    impl = "bertdesk_ckpt" if variant == "checkpointed" else "bertdesk"
    return _keras_job(impl, SHAPES[shape], "train", jit, batch, seq)


def alternate(shape, precision, jit, rounds, steps, variants):
    """Median seconds per step of each variant, built and timed in turn."""
    runs = {}
    for name in variants:
        use_variant(name)  # each model traces (or runs) the ops it was built with
        runs[name] = training_step(shape, precision, jit, name)
        for _ in range(2):
            runs[name]()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name in variants:
            use_variant(name)  # PyTorch runs eagerly: set the ops for each call
            for _ in range(steps):
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def memory_worker(args):
    use_variant(args.variant)
    step = training_step(args.shape, args.precision, args.jit, args.variant)
    for _ in range(3):
        step()
    print(json.dumps({"peak_mb": peak_resident_mb()}))


def peak_memory(shape, precision, jit, variant):
    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--shapes", shape,
           "--precision", precision] + (["--jit"] if jit else ["--no-jit"])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="mini,base")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None,
                   help="XLA (default: on for JAX and TensorFlow)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, from " + ", ".join(VARIANTS))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    from bertdesk.lean_import import import_keras_lean

    keras = import_keras_lean()
    backend = keras.backend.backend()
    if args.jit is None:
        args.jit = backend != "torch"
    if args.worker:
        args.shape = args.shapes
        return memory_worker(args)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    base = variants[0]
    print(f"{backend}{' + XLA' if args.jit else ''}, {args.precision}, batch 16 x 128, "
          f"median of {args.rounds * args.steps} steps alternating; peak MB per variant alone; "
          f"ratios against {base} (speed: its time / the variant's)")
    print(f"{'shape':<6} {'variant':<13} {'step ms':>8} {'speed':>7} {'peak MB':>8} {'memory':>7}")
    for shape in args.shapes.split(","):
        t = alternate(shape, args.precision, args.jit, args.rounds, args.steps, variants)
        mb = ({v: peak_memory(shape, args.precision, args.jit, v) for v in variants}
              if args.memory else {})
        for v in variants:
            row = f"{shape:<6} {v:<13} {1e3 * t[v]:>8.0f} {t[base] / t[v]:>6.2f}x"
            if mb:
                row += f" {mb[v]:>8.0f} {mb[v] / mb[base]:>6.2f}x"
            print(row, flush=True)


if __name__ == "__main__":
    main()
