"""Run the whole test suite once per Keras backend, each in its own process
(KERAS_BACKEND is read when Keras is imported), and print each backend's
15 slowest tests and one summary line.

    python tests/run_all_backends.py [pytest args...]
    BERTDESK_BACKENDS=jax python tests/run_all_backends.py -k tokenizer
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = ("jax", "tensorflow", "torch")  # jax first: it also runs backend-neutral tests
# XLA's CPU code generation at LLVM -O1 instead of -O2 (unless XLA_FLAGS is
# set): the tests' compiled steps compile in half the time, and the JAX
# fine-tuning tests take 165 s instead of 222 s. Only the machine code's
# optimisation changes, not the graph XLA compiles; the speed benchmarks
# keep XLA's default.
XLA_FLAGS = "--xla_backend_optimization_level=1"


def main(argv):
    root = Path(__file__).resolve().parent.parent
    backends = os.environ.get("BERTDESK_BACKENDS", ",".join(BACKENDS)).split(",")
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    bad = []
    for backend in backends:
        env = {"XLA_FLAGS": XLA_FLAGS, **os.environ, "KERAS_BACKEND": backend,
               "TF_CPP_MIN_LOG_LEVEL": "2", "QT_QPA_PLATFORM": "offscreen"}
        print(f"\n===== KERAS_BACKEND={backend} =====", flush=True)
        start = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
             "--durations=15", *argv],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sys.stdout.write(proc.stdout)
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        counts = {k: 0 for k in totals}
        for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary):
            counts["error" if kind.startswith("error") else kind] += int(n)
        for k in totals:
            totals[k] += counts[k]
        print(f"[{backend}] exit {proc.returncode} in {time.time() - start:.0f}s: {summary}",
              flush=True)
        if proc.returncode != 0 or counts["passed"] == 0:
            bad.append(backend)
    print()
    for backend in bad:
        print(f"backend {backend}: FAILED")
    failed = totals["failed"] + totals["error"]
    print(f"all backends: {totals['passed']} passed, {failed} failed, "
          f"{totals['skipped']} skipped")
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
