"""Where a PyTorch training step's time goes on a CUDA GPU: bertdesk (Keras
on PyTorch) next to transformers, the same classifier step as
`bench/speed.py --modes train`.

For each implementation it prints the wall time of a step, the GPU's busy
time in it (the sum of its kernels' durations, from `torch.profiler`), the
number of kernels, how many times the step waited for the device
(`torch.cuda.set_sync_debug_mode`) and from where, the idle time between
kernels with the largest gaps, and the kernels that take the most time. A step whose busy time is well under its wall time is held back by
the host (Python, launches, synchronisations), not by the GPU.

    python bench/gpu_profile.py --shape base --seq 128 --batch 256
"""

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _step(impl, shape, batch, seq, precision):
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import speed

    if impl == "transformers":
        return speed._transformers_job(speed.SHAPES[shape], "train", precision, batch, seq)
    import keras

    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    return speed._keras_job("bertdesk", speed.SHAPES[shape], "train", False, batch, seq)


def _short(filename):
    return filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")


def worker(args):
    import torch
    from torch.profiler import ProfilerActivity, profile

    step = _step(args.impl, args.shape, args.batch, args.seq, args.precision)
    gpu = torch.cuda.is_available()  # on the CPU: a dry run of this script
    for _ in range(3):
        step()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    syncs = []  # where the step waited for the device: the Python frames

    def record(message, *args, **kwargs):
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1]
                      if "/warnings.py" not in f.filename]
            syncs.append(" <- ".join(f"{_short(f.filename)}:{f.lineno}"
                                     for f in frames[-4:][::-1]))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        if gpu:
            torch.cuda.set_sync_debug_mode("warn")
        step()
        if gpu:
            torch.cuda.set_sync_debug_mode("default")
    steps = 3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    sort = "device_time_total" if gpu else "self_cpu_time_total"
    busy = sum(e.device_time for e in events) / steps / 1e3  # ms
    print(f"{args.impl}: step {1e3 * statistics.median(times):.1f} ms wall "
          f"(median of 5), GPU kernels {busy:.1f} ms busy, {len(events) / steps:.0f} "
          f"kernels/step, {len(syncs)} waits for the device in a step:")
    for where, count in collections.Counter(syncs).most_common():
        print(f"  {count} x {where}")
    _print_gaps(events, steps)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    table = prof.key_averages().table(sort_by=sort, row_limit=args.top,
                                      max_name_column_width=60)
    print(table, flush=True)


def _print_gaps(kernels, steps, top=10):
    """Where the GPU sat idle between one kernel's end and the next one's
    start: the total a step, by size, and the largest gaps with the kernels
    either side (the host was late launching the second)."""
    kernels = sorted(kernels, key=lambda e: e.time_range.start)
    gaps = [(b.time_range.start - a.time_range.end, a.name, b.name)
            for a, b in zip(kernels, kernels[1:])]
    gaps = [g for g in gaps if g[0] > 0]
    if not gaps:
        return
    idle = sum(g[0] for g in gaps) / steps / 1e3
    buckets = collections.Counter(
        "<10us" if g < 10 else "10-100us" if g < 100 else "0.1-1ms" if g < 1000 else ">1ms"
        for g, _, _ in gaps)
    print(f"  idle between kernels: {idle:.1f} ms a step (across {steps} steps: "
          f"{dict(buckets)}); largest gaps:")
    for gap, before, after in sorted(gaps, reverse=True)[:top]:
        print(f"    {gap / 1e3:7.2f} ms  after {before[:50]}  before {after[:50]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impls", default="bertdesk,transformers")
    p.add_argument("--shape", default="base")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--trace", help="also write the profile's timeline here (Chrome trace JSON, "
                                   "one file per implementation: IMPL is replaced)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    for impl in args.impls.split(","):
        cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--shape", args.shape,
               "--seq", str(args.seq), "--batch", str(args.batch), "--precision",
               args.precision, "--top", str(args.top)]
        if args.trace:
            cmd += ["--trace", args.trace.replace("IMPL", impl)]
        subprocess.run(cmd, env=dict(os.environ, KERAS_BACKEND="torch"))


if __name__ == "__main__":
    main()
