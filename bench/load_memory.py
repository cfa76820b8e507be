"""Loading a checkpoint and predicting with it: peak resident memory and time.

A random BERT checkpoint in the Hugging Face layout (config.json +
model.safetensors, or pytorch_model.bin with `--weights bin`, written by
transformers) is loaded in a fresh process
per job, then one forward pass runs on a batch (no gradients):

- bertdesk: `bertdesk.load_backbone(folder)` on each Keras backend (JAX and
  TensorFlow run the forward pass compiled, PyTorch eager), the backbone
  called as `predict_on_batch` does;
- transformers: `BertModel.from_pretrained(folder)` (its default loading:
  no random initialisation of loaded weights), called under `no_grad`.

Each job reports its resident memory after imports, the peak after loading,
the peak after the forward pass (Linux `VmHWM`), and the load time; ratios
are bertdesk's lowest peak over transformers'. Allocator settings are
glibc's defaults for every job.

    .venv/bin/python bench/load_memory.py                 # base, batch 16 x 128
    .venv/bin/python bench/load_memory.py --shape large --rounds 2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4,
                       intermediate_size=1024),
          "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                       intermediate_size=3072),
          "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                        intermediate_size=4096)}
JOBS = [("bertdesk", "jax"), ("bertdesk", "tensorflow"), ("bertdesk", "torch"),
        ("transformers", "torch")]


def memory_mb():
    """(resident, peak resident) of this process in MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values["VmRSS"], values["VmHWM"]


def write_checkpoint(folder, shape, weights="safetensors"):
    """A randomly initialised transformers BertModel, saved as safetensors
    (or `pytorch_model.bin`)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(**SHAPES[shape]))
    model.save_pretrained(folder)
    if weights == "bin":  # (transformers 5 writes safetensors only)
        torch.save(model.state_dict(), Path(folder) / "pytorch_model.bin")
        (Path(folder) / "model.safetensors").unlink()


# === One job, in its own process ===
def worker(impl, folder, batch, seq):
    import numpy as np

    rng = np.random.default_rng(0)
    token_ids = rng.integers(1000, 30000, (batch, seq)).astype("int32")
    if impl == "transformers":
        import torch
        from transformers import BertModel

        imported = memory_mb()[0]
        t = time.perf_counter()
        model = BertModel.from_pretrained(folder).eval()
        loaded = time.perf_counter() - t
        after_load = memory_mb()[1]
        with torch.no_grad():
            model(input_ids=torch.as_tensor(token_ids, dtype=torch.long),
                  attention_mask=torch.ones(batch, seq, dtype=torch.long))
    else:
        from bertdesk.lean_import import import_keras_lean

        import_keras_lean()  # as the command line imports Keras
        import bertdesk

        imported = memory_mb()[0]
        t = time.perf_counter()
        backbone = bertdesk.load_backbone(folder)
        loaded = time.perf_counter() - t
        after_load = memory_mb()[1]
        backbone.compile(jit_compile=os.environ["KERAS_BACKEND"] != "torch")
        backbone.predict_on_batch({"token_ids": token_ids,
                                   "segment_ids": np.zeros_like(token_ids),
                                   "padding_mask": np.ones_like(token_ids)})
    return {"imported_mb": imported, "load_peak_mb": after_load,
            "peak_mb": memory_mb()[1], "load_s": loaded,
            "tensorflow_loaded": "tensorflow" in sys.modules}


def run_job(impl, backend, folder, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, __file__, "--worker", impl, "--folder", str(folder),
                          "--batch", str(args.batch), "--seq", str(args.seq)],
                         env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {out.returncode}: {tail[:120]}"}
    return json.loads(lines[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="base")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=1, help="run every job this many times")
    p.add_argument("--weights", choices=("safetensors", "bin"), default="safetensors",
                   help="the checkpoint's weight file: model.safetensors or pytorch_model.bin")
    p.add_argument("--jobs", default=",".join(f"{i}:{b}" for i, b in JOBS),
                   help="implementation:backend pairs")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, args.batch, args.seq)))
        return
    jobs = [tuple(j.split(":")) for j in args.jobs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"bert-{args.shape}"
        write_checkpoint(folder, args.shape, args.weights)
        weights = next(folder.glob("*.safetensors" if args.weights == "safetensors" else "*.bin"))
        size = weights.stat().st_size / 2 ** 20
        print(f"BERT-{args.shape} checkpoint, {weights.name} {size:.0f} MB; forward at "
              f"batch {args.batch} x {args.seq}; {os.cpu_count()} CPUs; {args.rounds} round(s)")
        results = {job: [] for job in jobs}
        for _ in range(args.rounds):
            for job in jobs:
                results[job].append(run_job(*job, folder, args))
    print(f"{'job':<24}{'imports MB':>11}{'load peak MB':>13}{'peak MB':>9}{'load s':>8}")
    best = {}
    for (impl, backend), rows in results.items():
        good = [r for r in rows if "error" not in r]
        if not good:
            print(f"{impl + ' ' + backend:<24}{rows[0]['error']}")
            continue
        med = {k: statistics.median(r[k] for r in good)
               for k in ("imported_mb", "load_peak_mb", "peak_mb", "load_s")}
        tf = "  (TensorFlow loaded)" if backend != "tensorflow" and any(
            r["tensorflow_loaded"] for r in good) else ""
        print(f"{impl + ' ' + backend:<24}{med['imported_mb']:>11.0f}{med['load_peak_mb']:>13.0f}"
              f"{med['peak_mb']:>9.0f}{med['load_s']:>8.2f}{tf}")
        if impl not in best or med["peak_mb"] < best[impl][1]:
            best[impl] = (backend, med["peak_mb"])
    if "bertdesk" in best and "transformers" in best:
        (b, ours), (_, theirs) = best["bertdesk"], best["transformers"]
        print(f"lowest peak: bertdesk {ours:.0f} MB ({b}) against transformers {theirs:.0f} MB: "
              f"{ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
