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
utilisation against a GEMM peak measured in the same run (at the start of
every round, each row against the highest so far, and after the last job
for the summary: a shared machine's speed drifts, and a peak measured in a
slow moment put utilisation above 100%).
Ratios are bertdesk's best over each peer's best in the same run.

On a machine with a CUDA GPU (`--device cuda`, the default when PyTorch sees
one) every job runs on the GPU: the GEMM peak is a large bf16 matrix product
there, memory is the device's peak allocation, and each (implementation,
backend) runs all its shapes in one process to save start-up and compile
time. The `pretrain` mode is a BERT pretraining step (MLM at the masked
positions + NSP for bertdesk, bench/pretrain_speed.py's models):

    python bench/speed.py --device cuda --shapes base,large --seqs 128,512 \
        --precisions bf16 --modes train,pretrain --backends jax,torch
"""

import argparse
import gc
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
        ("transformers", "torch", False),
        # with gradient checkpointing (not in the default --impls)
        ("bertdesk_ckpt", "jax", True), ("bertdesk_ckpt", "tensorflow", True),
        ("bertdesk_ckpt", "torch", False)]


PREDICTIONS = 20  # masked positions per sequence in the pretrain mode
# PyTorch's bf16 products below this fraction of its fp32 speed: its bf16
# jobs would take an hour and measure only the fallback, so they are skipped
SLOW_BF16 = 0.25


def model_flops(shape, batch, seq, mode):
    """Matmul FLOPs of one call: 2 per multiply-add; training = 3x forward.

    Nominal: the whole last layer at every position, although bertdesk's
    heads run it only where they read."""
    h, f, n = shape["hidden_dim"], shape["intermediate_dim"], shape["num_layers"]
    tokens = batch * seq
    per_layer = 2 * tokens * (4 * h * h + 2 * h * f) + 2 * 2 * batch * seq * seq * h
    forward = n * per_layer + 2 * batch * h * h  # + pooler
    if mode == "pretrain":  # + MLM transform and vocabulary logits at the masked positions
        forward += 2 * batch * PREDICTIONS * (h * h + h * VOCAB)
    return forward * (1 if mode == "forward" else 3)


def bertdesk_work_fraction(shape, batch, seq, mode):
    """The share of `model_flops` bertdesk's step computes: its train and
    pretrain heads read the last layer at [CLS] (and the masked positions)
    alone, so it runs the keys and values there at every position and the
    rest only where read; keras-hub and transformers compute it all (1.0).
    Its MFU times this fraction is the utilisation of the work it does."""
    if mode == "forward":
        return 1.0
    h, f = shape["hidden_dim"], shape["intermediate_dim"]
    read = 1 + (PREDICTIONS if mode == "pretrain" else 0)
    full = 2 * batch * seq * (4 * h * h + 2 * h * f) + 4 * batch * seq * seq * h
    done = 2 * batch * seq * 2 * h * h + 2 * batch * read * (2 * h * h + 2 * h * f) \
        + 4 * batch * read * seq * h
    return 1 - 3 * (full - done) / model_flops(shape, batch, seq, mode)


def _best_seconds(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm_peak(n=2048, device="cpu"):
    """GFLOP/s of n x n matmuls: fp32 is the best of numpy, PyTorch (its
    BLAS, and oneDNN's product, `bertdesk/layers/cpu_products.py`) and
    TensorFlow (each links its own BLAS); bf16 through PyTorch (oneDNN).
    On a GPU: PyTorch's bf16 and fp32 products (random data) there."""
    import numpy as np

    flops = 2 * n ** 3
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    if device == "cuda":
        import torch

        def timed(x):
            def run():
                x @ x
                torch.cuda.synchronize()
            return flops / _best_seconds(run, repeats=10) / 1e9

        t = torch.from_numpy(a).cuda()
        fp32 = {"torch": timed(t)}
        return {"fp32": fp32["torch"], "fp32_by_library": fp32,
                "bf16": timed(t.to(torch.bfloat16))}
    fp32 = {"numpy": flops / _best_seconds(lambda: a @ a) / 1e9}
    out = {"bf16": None}
    try:
        import torch

        t = torch.from_numpy(a)
        fp32["torch"] = flops / _best_seconds(lambda: t @ t) / 1e9
        if torch.backends.mkldnn.is_available():  # the product bertdesk may take instead
            fp32["torch onednn"] = flops / _best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(
                t, t, None, "none", [], "")) / 1e9
        b = t.to(torch.bfloat16)
        # Without bfloat16 instructions (AVX2-only CPUs) PyTorch multiplies
        # bf16 at about 1 GFLOP/s: a small product first, the big one only
        # where it takes seconds, not minutes.
        small = b[:256, :256].contiguous()
        out["bf16"] = 2 * 256 ** 3 / _best_seconds(lambda: small @ small, repeats=2) / 1e9
        if out["bf16"] > SLOW_BF16 * fp32["torch"]:
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
    if impl in ("bertdesk", "bertdesk_ckpt"):
        import bertdesk
        from bertdesk.tasks.bert_text_classifier import BertTextClassifier
        from bertdesk.training.optimization import bert_adamw

        backbone = bertdesk.BertBackbone(vocabulary_size=VOCAB, **shape,
                                         gradient_checkpointing=impl == "bertdesk_ckpt")
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
    # no metric for any implementation (keras-hub's tasks add an accuracy by
    # default: work in its step alone)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[], jit_compile=jit)
    # Both return host numbers, so a call ends when the device has finished.
    if mode == "forward":
        return _device_forward(model, x) or (lambda: model.predict_on_batch(x))
    return lambda: model.train_on_batch(x, y)


def _device_forward(model, x):
    """On a GPU, a forward call whose outputs stay on the device, waited for
    (`predict_on_batch` copies them to the host, which there costs more
    than the model: transformers' base forward at seq 128 fell from 13,861
    to 2,514 seq/s with the same copies); None on the CPU, where
    `predict_on_batch` copies nothing."""
    backend = os.environ.get("KERAS_BACKEND")
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        xt = {k: torch.as_tensor(v, device="cuda") for k, v in x.items()}

        def step():
            with torch.no_grad():
                model(xt, training=False)
            torch.cuda.synchronize()
        return step
    if backend == "jax":
        import jax

        if jax.default_backend() != "gpu":
            return None
        # What Keras' predict_step compiles: the stateless call, jitted.
        call = jax.jit(lambda trainable, other, x: model.stateless_call(
            trainable, other, x, training=False)[0])
        trainable = [v.value for v in model.trainable_variables]
        other = [v.value for v in model.non_trainable_variables]
        xj = jax.device_put(x)
        return lambda: jax.block_until_ready(call(trainable, other, xj))
    return None


def _transformers_job(shape, mode, precision, batch, seq):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = BertConfig(vocab_size=VOCAB, hidden_size=shape["hidden_dim"],
                        num_hidden_layers=shape["num_layers"],
                        num_attention_heads=shape["num_heads"],
                        intermediate_size=shape["intermediate_dim"], num_labels=2)
    x, y = _inputs(batch, seq)
    xt = {"input_ids": torch.tensor(x["token_ids"]).long().to(device),
          "token_type_ids": torch.tensor(x["segment_ids"]).long().to(device),
          "attention_mask": torch.tensor(x["padding_mask"]).long().to(device)}
    yt = torch.tensor(y).long().to(device)

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    if mode == "forward":
        model = BertModel(config).to(device).eval()

        def step():
            with torch.no_grad(), autocast():
                out = model(**xt)
            if device == "cpu":  # on the host, as Keras' predict_on_batch returns them
                out.last_hidden_state.float().numpy()
                out.pooler_output.float().numpy()
            sync()  # on a GPU left there, as _device_forward leaves Keras' outputs
        return step
    model = BertForSequenceClassification(config).to(device).train()
    # fused: what transformers' Trainer uses by default with PyTorch 2.8 and later
    # (optim="adamw_torch_fused"); torch's for-loop AdamW took 26-36 ms more a
    # BERT-mini step on the CPU (runs before 2026-12-04 06:30 used it)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)

    def step():
        with autocast():
            loss = model(**xt, labels=yt).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sync()
    return step


class _DeviceMemory:
    """Peak device memory of one configuration where the backend tells it:
    PyTorch's allocator resets per configuration; JAX's peak covers the
    whole process, so it is the largest so far (each configuration's when
    the shapes are listed smallest first). None on the CPU (the job's VmHWM
    is reported instead)."""

    def __init__(self, impl):
        self.kind = None
        if impl == "transformers" or os.environ.get("KERAS_BACKEND") == "torch":
            import torch

            if torch.cuda.is_available():
                self.kind = "torch"
                torch.cuda.reset_peak_memory_stats()
        elif os.environ.get("KERAS_BACKEND") == "jax":
            import jax

            if jax.default_backend() == "gpu":
                self.kind = "jax"

    def peak_mb(self):
        if self.kind == "torch":
            import torch

            return torch.cuda.max_memory_allocated() / 2 ** 20
        if self.kind == "jax":
            import jax

            stats = jax.local_devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2 ** 20
        return None


def _run_config(impl, jit, config, warmup, repeats):
    shape = SHAPES[config["shape"]]
    batch, seq, mode = config["batch"], config["seq"], config["mode"]
    if impl != "transformers":
        import keras

        keras.config.set_dtype_policy("mixed_bfloat16" if config["precision"] == "bf16"
                                      else "float32")
    memory = _DeviceMemory(impl)
    if mode == "pretrain":
        from pretrain_speed import pretraining_step

        step = pretraining_step(impl, shape, batch, seq, PREDICTIONS, config["precision"],
                                jit=jit)
    elif impl == "transformers":
        step = _transformers_job(shape, mode, config["precision"], batch, seq)
    else:
        step = _keras_job(impl, shape, mode, jit, batch, seq)
    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    for _ in range(warmup):
        step()
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": statistics.median(times), "first_call": first,
            "peak_mb": peak_resident_mb(), "device_peak_mb": memory.peak_mb(),
            "tensorflow_loaded": "tensorflow" in sys.modules,
            "products": _products(impl),
            # The kernel's share of the CPU time, and the page faults behind
            # most of it: memory the allocator hands back to the system and
            # faults in again on every call.
            "faults_per_call": (after.ru_minflt - before.ru_minflt) / repeats,
            "sys_share": (after.ru_stime - before.ru_stime) / cpu if cpu else 0.0}


def _products(impl):
    """Where bertdesk's float32 products ran on PyTorch's CPU, for the row
    (`bertdesk/layers/cpu_products.py`); None elsewhere."""
    if not impl.startswith("bertdesk") or "torch" not in sys.modules:
        return None
    import keras
    import torch

    if keras.backend.backend() != "torch" or torch.cuda.is_available():
        return None
    from bertdesk.layers import cpu_products

    ratio = cpu_products.probe_ratio()
    measured = f", measured {ratio:.2f}x ATen's" if ratio is not None else ""
    return f"fp32 products: {'oneDNN' if cpu_products.products_use_onednn() else 'ATen'}{measured}"


def worker(args):
    if args.allocator == "keep":  # before any library starts its threads
        from bertdesk.training.allocator import keep_freed_memory

        keep_freed_memory()
    if args.impl != "transformers":
        # As the command line does (for both Keras implementations): without
        # the JAX and scikit-learn integrations Keras loads when installed.
        from bertdesk.lean_import import import_keras_lean

        import_keras_lean()
    for config in json.loads(args.configs):
        try:
            result = _run_config(args.impl, args.jit, config, args.warmup, args.repeats)
        except Exception as e:  # one failed shape (e.g. out of memory) is a row, not the end
            result = {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]}"}
        with open(args.results_file, "a") as f:
            f.write(json.dumps({**config, **result}) + "\n")
        if args.impl != "transformers":
            import keras

            keras.backend.clear_session()
        gc.collect()


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

def run_job(impl, backend, jit, configs, args, timeout):
    """Run `configs` in one worker process; one result per config (an
    error for those it did not reach)."""
    results_file = Path(args.scratch) / f"{impl}-{backend}-{int(jit)}-{time.time_ns()}.jsonl"
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--configs",
           json.dumps(configs), "--results-file", str(results_file),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--allocator", args.allocator]
    if jit:
        cmd.append("--jit")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "bench"),
                                                        os.environ.get("PYTHONPATH")])))
    error = None
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            error = (out.stderr.strip().splitlines() or ["no output"])[-1][:120]
    except subprocess.TimeoutExpired:
        error = f"timeout after {timeout:.0f}s"
    done = ([json.loads(line) for line in results_file.read_text().splitlines()]
            if results_file.exists() else [])
    return done + [{**c, "error": error or "not reached"} for c in configs[len(done):]]


def _label(impl, backend, jit):
    return f"{impl} {backend}" + (" xla" if jit and backend == "tensorflow" else "")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="mini,base")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--modes", default="forward,train", help="forward, train, pretrain")
    p.add_argument("--impls", default="bertdesk,keras_hub,transformers",
                   help="comma-separated, run in this order; bertdesk_ckpt: bertdesk with "
                        "gradient checkpointing")
    p.add_argument("--backends", default="jax,tensorflow,torch")
    p.add_argument("--batch", type=int, default=16,
                   help="sequences per batch at --seqs' first length (others keep the tokens)")
    p.add_argument("--seq", "--seqs", dest="seqs", default="128",
                   help="sequence lengths, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1,
                   help="run every job this many times, round-robin; ratios from the median "
                        "over rounds, with the spread of the per-round ratios (this machine's "
                        "speed drifts by 10-30%% over minutes)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if PyTorch sees one")
    p.add_argument("--one-process-per-job", action="store_true", default=None,
                   help="run all configs of a job in one process (default on a GPU)")
    p.add_argument("--job-timeout", type=int, default=900)
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds: start no job after this, and stop any job at it")
    p.add_argument("--allocator", choices=("default", "keep"), default="default",
                   help="keep: every job (each implementation alike) keeps freed memory for "
                        "reuse, as bertdesk's command line does "
                        "(bertdesk/training/allocator.py)")
    p.add_argument("--json-out", help="also write all results here (after every job)")
    p.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    # worker mode (one process, one or more configs)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--configs", help=argparse.SUPPRESS)
    p.add_argument("--results-file", help=argparse.SUPPRESS)
    p.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    start = time.perf_counter()
    if args.device is None:
        try:
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            args.device = "cpu"
    import tempfile

    args.scratch = args.scratch or tempfile.mkdtemp(prefix="bertdesk-speed-")

    gpu = args.device == "cuda"
    peaks = [gemm_peak(8192 if gpu else 2048, args.device)]
    peak = peaks[0]
    where = "GPU" if gpu else f"{os.cpu_count()} CPUs"
    print(f"{_describe_peak(peak, gpu)}; {where}; batch {args.batch} at seq "
          f"{args.seqs.split(',')[0]}, median of {args.repeats} after {args.warmup} warm-up "
          f"calls", flush=True)
    seqs = [int(s) for s in args.seqs.split(",")]
    tokens = args.batch * seqs[0]
    configs = [{"shape": shape, "seq": seq, "batch": max(1, tokens // seq), "mode": mode,
                "precision": precision}
               for shape in args.shapes.split(",") for seq in seqs
               for precision in args.precisions.split(",") for mode in args.modes.split(",")]
    # In the order --impls and --backends name them (e.g. the quick ones first
    # when a --deadline may stop the run).
    jobs = [(i, b, jit) for impl in args.impls.split(",") for backend in args.backends.split(",")
            for i, b, jit in JOBS if (i, b) == (impl, backend)]
    # On the CPU one process per (job, config): its VmHWM is that config's
    # peak memory. On a GPU one process per job runs every config.
    group = gpu if args.one_process_per_job is None else args.one_process_per_job
    runs = ([(job, configs) for job in jobs] if group else
            [(job, [c]) for c in configs for job in jobs])
    # every other round in the reverse order: no implementation always runs
    # first (this machine's speed drifts over minutes)
    runs = [(r, job, run_configs) for r in range(args.rounds)
            for job, run_configs in (runs if r % 2 == 0 else runs[::-1])]
    results = []
    print(f"{'shape':<5} {'seq':>4} {'batch':>5} {'prec':<4} {'mode':<8} {'implementation':<24} "
          f"{'seq/s':>9} {'MFU':>6} {'first call':>10} {'peak MB':>8} {'faults/call':>11} "
          f"{'sys':>5}", flush=True)
    for i, (round_, (impl, backend, jit), run_configs) in enumerate(runs):
        if i and round_ != runs[i - 1][0]:  # a new round: the machine's speed now
            peaks.append(gemm_peak(8192 if gpu else 2048, args.device))
            peak = _highest_peak(peaks)
            print(f"before round {round_ + 1}: {_describe_peak(peaks[-1], gpu)}; utilisation "
                  f"from here against the highest so far, fp32 {peak['fp32']:.0f}", flush=True)
        timeout = args.job_timeout
        if args.deadline is not None:
            timeout = min(timeout, args.deadline - (time.perf_counter() - start))
        reasons = [_skip_reason(backend, c, peak, gpu) for c in run_configs]
        rows = [{**c, "error": why} for c, why in zip(run_configs, reasons) if why]
        run_configs = [c for c, why in zip(run_configs, reasons) if not why]
        if run_configs and timeout >= 10:
            rows += run_job(impl, backend, jit, run_configs, args, timeout)
        else:
            rows += [{**c, "error": "past the deadline"} for c in run_configs]
        for r in rows:
            row = {**r, "impl": impl, "backend": backend, "jit": jit, "round": round_,
                   "name": _label(impl, backend, jit)}
            head = (f"{r['shape']:<5} {r['seq']:>4} {r['batch']:>5} {r['precision']:<4} "
                    f"{r['mode']:<8} {row['name']:<24}")
            if "seconds" in r:
                row["seq_per_s"] = r["batch"] / r["seconds"]
                row["mfu"] = _utilisation(r, peak)
                mem = r["device_peak_mb"] if gpu and r["device_peak_mb"] else r["peak_mb"]
                print(f"{head} {row['seq_per_s']:>9.1f} {100 * row['mfu']:>5.1f}% "
                      f"{r['first_call']:>9.1f}s {mem:>8.0f} {r['faults_per_call']:>11.0f} "
                      f"{100 * r['sys_share']:>4.0f}%"
                      + ("  (TensorFlow loaded)" if r["tensorflow_loaded"]
                         and backend != "tensorflow" else "")
                      + (f"  ({r['products']})" if r.get("products") else ""), flush=True)
            else:
                print(f"{head} {'' if r['error'].startswith('skipped') else 'failed: '}"
                      f"{r['error']}", flush=True)
            results.append(row)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(
                {"device": args.device, "gemm_peak": peak, "gemm_peaks": peaks,
                 "results": results}, indent=2))
    if results:  # once more at the end: a one-round run had only its start's
        peaks.append(gemm_peak(8192 if gpu else 2048, args.device))
        peak = _highest_peak(peaks)
        print(f"after the last job: {_describe_peak(peaks[-1], gpu)}", flush=True)
    print("bertdesk's best over each peer's best, per configuration "
          "(speed: sequences/s" + (f", median of {args.rounds} rounds" if args.rounds > 1 else "")
          + "; utilisation against the run's highest GEMM peak"
          + (f" (fp32 {peak['fp32']:.0f} GFLOP/s)" if len(peaks) > 1 else "")
          + "; memory: the lowest peak):")
    shares = sorted({(c["shape"], c["seq"], c["mode"], bertdesk_work_fraction(
        SHAPES[c["shape"]], c["batch"], c["seq"], c["mode"])) for c in configs
        if c["mode"] != "forward"})
    if shares:
        print("(MFU counts nominal FLOPs: the whole model at every position, as keras-hub and "
              "transformers compute it. bertdesk's training and pretraining steps run the last "
              "layer only where their heads read it: "
              + ", ".join(f"{s} x {q} {m} {w:.2f}" for s, q, m, w in shares)
              + " of the nominal FLOPs; its MFU times that share is the utilisation of its work)")
    for c in configs:
        key = (c["shape"], c["seq"], c["precision"], c["mode"])
        rows = [row for row in results if "seq_per_s" in row
                and (row["shape"], row["seq"], row["precision"], row["mode"]) == key]
        _print_ratios(key, rows, gpu, args.rounds, peak)


def _describe_peak(peak, gpu):
    bf16 = f"{peak['bf16']:.0f}" if peak["bf16"] else "n/a"
    libs = ", ".join(f"{k} {v:.0f}" for k, v in peak["fp32_by_library"].items())
    return (f"GEMM peak ({8192 if gpu else 2048}^3): fp32 {peak['fp32']:.0f} GFLOP/s ({libs}), "
            f"bf16 {bf16} GFLOP/s (torch)")


def _highest_peak(peaks):
    """Each precision's highest of the peaks measured so far (the machine's
    speed when nothing else slowed it)."""
    bf16 = [p["bf16"] for p in peaks if p["bf16"]]
    by_library = {}
    for p in peaks:
        for name, value in p["fp32_by_library"].items():
            by_library[name] = max(value, by_library.get(name, 0))
    return {"fp32": max(p["fp32"] for p in peaks), "fp32_by_library": by_library,
            "bf16": max(bf16) if bf16 else None}


def _utilisation(row, peak):
    """The row's model FLOPs over its seconds, against `peak` (bf16 against
    the faster of the two: a CPU without bf16 instructions may multiply
    bf16 through float32)."""
    flops = model_flops(SHAPES[row["shape"]], row["batch"], row["seq"], row["mode"])
    ref = peak["fp32"]
    if row["precision"] == "bf16":
        ref = max(ref, peak["bf16"] or 0)
    return flops / row["seconds"] / (ref * 1e9)


def _skip_reason(backend, config, peak, gpu):
    """Why a PyTorch job (bertdesk or keras-hub on PyTorch, transformers)
    skips `config`: a bf16 one, where PyTorch has no fast bf16 products;
    else None."""
    torch_fp32 = peak["fp32_by_library"].get("torch", peak["fp32"])
    if (gpu or backend != "torch" or config["precision"] != "bf16" or peak["bf16"] is None
            or peak["bf16"] > SLOW_BF16 * torch_fp32):
        return None
    return (f"skipped: PyTorch's bf16 products run at {peak['bf16']:.1f} GFLOP/s on this "
            f"CPU (no bf16 instructions)")


def _fastest(rows):
    """{impl: (sequences/s, configuration name)}: each implementation's best
    configuration, by its median over the rows given (one per round)."""
    speeds = {}
    for row in rows:
        speeds.setdefault((row["impl"], row["name"]), []).append(row["seq_per_s"])
    fastest = {}
    for (impl, name), values in speeds.items():
        speed = statistics.median(values)
        if speed > fastest.get(impl, (0, ""))[0]:
            fastest[impl] = (speed, name)
    return fastest


def _print_ratios(key, rows, gpu, rounds, peak):
    fastest, leanest = _fastest(rows), {}
    for row in rows:
        mem = row["device_peak_mb"] if gpu and row["device_peak_mb"] else row["peak_mb"]
        if mem < leanest.get(row["impl"], (float("inf"), ""))[0]:
            leanest[row["impl"]] = (mem, row["name"])
    per_round = [_fastest([row for row in rows if row["round"] == r]) for r in range(rounds)]
    label = " ".join(map(str, key))
    ours = [k for k in fastest if k.startswith("bertdesk")]
    peers = [k for k in fastest if not k.startswith("bertdesk")]
    for impl in ours:
        parts = []
        for k in peers:
            part = f"{fastest[impl][0] / fastest[k][0]:.2f}x {k} ({fastest[k][1]})"
            ratios = [f[impl][0] / f[k][0] for f in per_round if impl in f and k in f]
            if len(ratios) > 1:
                part += f" [rounds {min(ratios):.2f}-{max(ratios):.2f}x]"
            parts.append(part)
        memory = ", ".join(f"{leanest[impl][0] / leanest[k][0]:.2f}x {k} ({leanest[k][1]})"
                           for k in peers)
        speed = fastest[impl][0]
        mfu = _utilisation({**rows[0], "seconds": rows[0]["batch"] / speed}, peak)
        print(f"  {label}: {impl} {speed:.1f} seq/s ({fastest[impl][1]}, {100 * mfu:.1f}%): "
              f"{', '.join(parts) or 'no peer'}", flush=True)
        if peers:
            print(f"  {'':>{len(label)}}  {impl} peak {leanest[impl][0]:.0f} MB "
                  f"({leanest[impl][1]}): {memory}", flush=True)


if __name__ == "__main__":
    main()
