"""int8 inference: what `bertdesk.quantize_int8` costs in accuracy and buys
in speed and memory, on a model fine-tuned on SST-2.

One fine-tuned model (the bundled MiniLM, --train SST-2 sentences), scored
on --test held-out sentences (``../shared/data``) five ways, each from a
fresh load of the same weights:
  bertdesk float32; bertdesk int8 (`quantize_int8`: inputs to 7 bits, on
  PyTorch's CPU oneDNN's integer GEMM); Keras' own int8
  (`model.quantize("int8")`, 8-bit inputs: what a keras-hub model runs when
  quantized); transformers' `BertForSequenceClassification` on the
  exported weights in float32, and with PyTorch's dynamic int8 quantization
  (`torch.ao.quantization.quantize_dynamic` of its `nn.Linear` layers, the
  PyTorch BERT tutorial's recipe).
Prints accuracy, agreement with the float32 labels, the weights' memory and
times: the whole test set through each (batches of --batch-size sorted by
length, as `Predictor` and the plain transformers loop run them) and one
batch of 16 x 128 tokens (where the products are nearly all), rounds
alternating, medians.

    KERAS_BACKEND=torch .venv/bin/python bench/int8_quality.py
    KERAS_BACKEND=torch .venv/bin/python bench/int8_quality.py --run /tmp/int8_run  # reuse
    KERAS_BACKEND=torch .venv/bin/python bench/int8_quality.py --run /tmp/int8_run --allocator keep
"""

import argparse
import gc
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_quality import load_sst2, write_csv  # noqa: E402
from predict_speed import sorted_logits  # noqa: E402


def fine_tune(run, args):
    from bertdesk.training.finetune import FinetuneConfig, run_finetune

    train, rest = load_sst2(args.train, args.validation + args.test, args.seed)
    validation, test = rest[:args.validation], rest[args.validation:]
    run.mkdir(parents=True, exist_ok=True)
    write_csv(train, run / "train.csv")
    write_csv(validation, run / "validation.csv")
    write_csv(test, run / "test.csv")
    if not (run / "out" / "model").is_dir():
        start = time.perf_counter()
        run_finetune(FinetuneConfig(
            train=str(run / "train.csv"), validation=str(run / "validation.csv"),
            output=str(run / "out"), model="bundled", epochs=args.epochs,
            learning_rate=args.lr, max_length=128, seed=args.seed))
        print(f"fine-tuned in {time.perf_counter() - start:.0f} s")
    return test


def bertdesk_variant(model_dir, kind, texts, batch_size):
    """(predict all, one fixed batch, weight bytes) for a fresh load."""
    import keras
    import numpy as np

    from bertdesk.predictor import Predictor
    from bertdesk.quantization import quantize_int8
    from bertdesk.tasks.saving import load_model

    loaded = load_model(model_dir)
    if kind == "int8":
        quantize_int8(loaded.model)
    elif kind == "keras-int8":
        gc.freeze()
        try:
            loaded.model.quantize("int8")
        finally:
            gc.unfreeze()
    predictor = Predictor(loaded, batch_size=batch_size)
    labels = loaded.labels

    def all_labels():
        return [labels.index(r["label"]) for r in predictor.classify(texts)]

    fixed = loaded.tokenizer(_fixed_texts(texts), max_length=128, padding="max_length")
    fixed = {k: np.asarray(v) for k, v in fixed.items()}

    def one_batch():
        return keras.ops.convert_to_numpy(loaded.model.predict_on_batch(fixed)["logits"])

    weight_bytes = sum(int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(
        v.dtype)).itemsize for v in loaded.model.weights)
    return all_labels, one_batch, weight_bytes


def transformers_variant(hf_dir, kind, texts, batch_size):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    if kind == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                       dtype=torch.qint8)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)

    def all_labels():
        return [int(row.argmax()) for row in sorted_logits(model, tok, texts, batch_size, 128)]

    fixed = tok(_fixed_texts(texts), truncation=True, max_length=128, padding="max_length",
                return_tensors="pt")

    def one_batch():
        with torch.inference_mode():
            return model(**fixed).logits.numpy()

    return all_labels, one_batch, buffer.getbuffer().nbytes


def _fixed_texts(texts):
    """16 texts of 128 tokens or more: test sentences joined."""
    joined = " ".join(texts)
    words = joined.split()
    return [" ".join(words[i * 150:(i + 1) * 150]) for i in range(16)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="folder for the fine-tuned run (reused when it has one)")
    p.add_argument("--train", type=int, default=8000)
    p.add_argument("--validation", type=int, default=500)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="float32,int8,keras-int8,hf-float32,hf-int8")
    p.add_argument("--allocator", choices=("default", "keep"), default="default",
                   help="keep: freed memory kept by the process for every variant, as "
                        "bertdesk's command line runs (bertdesk.training.allocator)")
    args = p.parse_args()
    if args.allocator == "keep":
        from bertdesk.training import allocator

        allocator.keep_freed_memory()

    import keras
    import torch

    from bertdesk.io import convert

    run = Path(args.run) if args.run else Path(tempfile.mkdtemp(prefix="bench_int8_"))
    test = fine_tune(run, args)
    texts, gold = [t for t, _ in test], [int(y) for _, y in test]
    hf_dir = run / "hf"
    if not hf_dir.is_dir():
        convert(run / "out" / "model", hf_dir, to="hf")
    print(f"backend {keras.backend.backend()}, allocator {args.allocator}, "
          f"torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {len(texts)} test sentences, "
          f"batch {args.batch_size}; {args.rounds} rounds after one untimed, medians")

    variants = {}
    for name in args.variants.split(","):
        if name.startswith("hf-"):
            variants[name] = transformers_variant(hf_dir, name[3:], texts, args.batch_size)
        else:
            variants[name] = bertdesk_variant(run / "out" / "model", name, texts,
                                              args.batch_size)
    predictions, times, batch_times = {}, {n: [] for n in variants}, {n: [] for n in variants}
    for name, (all_labels, one_batch, _) in variants.items():  # untimed round
        predictions[name] = all_labels()
        one_batch()
    for _ in range(args.rounds):
        for name, (all_labels, one_batch, _) in variants.items():
            start = time.perf_counter()
            all_labels()
            times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            one_batch()
            batch_times[name].append(time.perf_counter() - start)

    base = predictions.get("float32")
    print(f"{'variant':<11} {'accuracy':>8} {'agree f32':>9} {'weights MB':>10} "
          f"{'test set s':>10} {'16x128 ms':>9}")
    for name, (_, _, weight_bytes) in variants.items():
        pred = predictions[name]
        accuracy = sum(p == g for p, g in zip(pred, gold)) / len(gold)
        agree = (sum(p == b for p, b in zip(pred, base)) / len(base)) if base else float("nan")
        print(f"{name:<11} {accuracy:8.4f} {agree:9.4f} {weight_bytes / 2**20:10.1f} "
              f"{statistics.median(times[name]):10.2f} "
              f"{statistics.median(batch_times[name]) * 1e3:9.1f}", flush=True)
    if "float32" in times:
        for name in variants:
            print(f"  float32 / {name}: test set {statistics.median(times['float32']) / statistics.median(times[name]):.2f}x, "
                  f"16x128 {statistics.median(batch_times['float32']) / statistics.median(batch_times[name]):.2f}x")


if __name__ == "__main__":
    main()
