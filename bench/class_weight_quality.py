"""Class weights on imbalanced data: SST-2 with the positives cut to a tenth,
fine-tuned with and without `--class-weight balanced`, scored on a balanced
held-out set (the bundled MiniLM, the current backend).

    KERAS_BACKEND=torch .venv/bin/python bench/class_weight_quality.py
    KERAS_BACKEND=torch .venv/bin/python bench/class_weight_quality.py --positive-share 0.05

Prints accuracy, macro-F1 and each label's recall for both runs.
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_quality import load_sst2, write_csv  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=2000, help="training sentences")
    p.add_argument("--positive-share", type=float, default=0.1)
    p.add_argument("--eval", type=int, default=1000, help="held-out sentences, half each label")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from bertdesk.training.finetune import FinetuneConfig, run_finetune

    rows, _ = load_sst2(60000, 0, args.seed)
    by_label = {"0": [r for r in rows if r[1] == "0"], "1": [r for r in rows if r[1] == "1"]}
    half = args.eval // 2
    held = by_label["0"][:half] + by_label["1"][:half]
    n_pos = int(round(args.train * args.positive_share))
    train = by_label["0"][half:half + args.train - n_pos] + by_label["1"][half:half + n_pos]
    random.Random(args.seed).shuffle(train)
    tmp = Path(tempfile.mkdtemp(prefix="bench_class_weight_"))
    write_csv(train, tmp / "train.csv")
    write_csv(held, tmp / "held.csv")
    print(f"SST-2: {len(train)} training sentences ({n_pos} positive), {len(held)} held out "
          f"(half positive); MiniLM, {args.epochs} epochs, lr {args.lr}")
    print(f"{'class weight':<13} {'accuracy':>8} {'macro-F1':>8} {'recall 0':>8} "
          f"{'recall 1':>8} {'seconds':>7}  accuracy per epoch (the best is kept)")
    for weighting in (None, "balanced"):
        start = time.perf_counter()
        result = run_finetune(FinetuneConfig(
            train=str(tmp / "train.csv"), validation=str(tmp / "held.csv"),
            output=str(tmp / f"run_{weighting}"), model="bundled", epochs=args.epochs,
            learning_rate=args.lr, max_length=64, seed=args.seed, class_weight=weighting))
        m = result["metrics"]
        recall = {c["label"]: c["recall"] for c in m["per_class"]}
        print(f"{weighting or 'none':<13} {m['accuracy']:8.3f} {m['macro_f1']:8.3f} "
              f"{recall['0']:8.3f} {recall['1']:8.3f} {time.perf_counter() - start:7.0f}  "
              + " ".join(f"{h['accuracy']:.3f}" for h in result["history"]), flush=True)


if __name__ == "__main__":
    main()
