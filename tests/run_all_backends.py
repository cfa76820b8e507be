"""Run the whole test suite once per Keras backend, each in its own process
(KERAS_BACKEND is read when Keras is imported), and print each backend's
15 slowest tests and one summary line.

    python tests/run_all_backends.py [pytest args...]
    BERTDESK_BACKENDS=jax python tests/run_all_backends.py -k tokenizer
    BERTDESK_TEST_JOBS=1 python tests/run_all_backends.py   # one backend at a time

Backends run side by side, as many at a time as there are CPUs the runner may
use (`BERTDESK_TEST_JOBS` overrides), the longest (JAX) first: the test
processes spend most of their time compiling and in Python, one core each
(TensorFlow's at 101% of a core, JAX's at 131%, timed on the 2-core host), so
two at once take about three quarters of the time (one test file on both
backends: 412 s side by side, 543 s in turn). Each backend's output is
printed whole when it finishes.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("jax", "tensorflow", "torch")  # longest first; jax also runs backend-neutral tests
# XLA's CPU code generation (unless XLA_FLAGS is set) at LLVM -O0 instead of
# -O2, and through its older elemental emitters instead of the newer fusion
# emitters (MLIR, then LLVM): the tests' compiled programs compile about 3x
# faster (the tiny classifier's training step 3.6-3.9 -> 1.1-1.6 s), and the
# JAX process runs its tests in 771 s instead of 1,237 s (at -O1, the earlier
# setting; each alone on the 2-core Zen 3 host). Only the machine code
# changes, not the graph XLA compiles, and the numbers stay within every
# test's tolerance; users' jobs and the speed benchmarks keep XLA's default.
XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
KINDS = ("passed", "failed", "skipped", "error")


def default_jobs(backends):
    """One backend per CPU this process may run on, at most one per backend."""
    jobs = os.environ.get("BERTDESK_TEST_JOBS")
    if jobs:
        if not jobs.isdigit() or int(jobs) < 1:
            raise SystemExit(f"BERTDESK_TEST_JOBS={jobs!r}: expected a whole number >= 1")
        return min(int(jobs), len(backends))
    return max(1, min(usable_cpus(), len(backends)))


def usable_cpus(cpu_max="/sys/fs/cgroup/cpu.max"):
    """The CPUs this process may run on, fewer where a cgroup (a container's
    `--cpus`) allows less CPU time than that."""
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1)
    try:
        quota, period = Path(cpu_max).read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, round(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read
    return cpus


def parse_summary(output):
    """pytest's last line -> counts of passed/failed/skipped/error."""
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    counts = dict.fromkeys(KINDS, 0)
    for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary):
        counts["error" if kind.startswith("error") else kind] += int(n)
    return summary, counts


class Run:
    """One backend's pytest process, its output in a temporary file (a pipe
    nobody reads while the other backends run would fill and stall it)."""

    def __init__(self, backend, argv, root):
        self.backend = backend
        env = {"XLA_FLAGS": XLA_FLAGS, **os.environ, "KERAS_BACKEND": backend,
               "TF_CPP_MIN_LOG_LEVEL": "2", "QT_QPA_PLATFORM": "offscreen"}
        self.log = tempfile.TemporaryFile(mode="w+", prefix=f"bertdesk-tests-{backend}-")
        self.start = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
             "--durations=15", *argv],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        print(f"started KERAS_BACKEND={backend}", flush=True)

    def report(self):
        """Prints the finished process's output; returns (exit code, counts)."""
        seconds = time.time() - self.start
        self.log.seek(0)
        output = self.log.read()
        self.log.close()
        print(f"\n===== KERAS_BACKEND={self.backend} =====", flush=True)
        sys.stdout.write(output)
        summary, counts = parse_summary(output)
        print(f"[{self.backend}] exit {self.proc.returncode} in {seconds:.0f}s: {summary}",
              flush=True)
        return self.proc.returncode, counts


def main(argv):
    root = Path(__file__).resolve().parent.parent
    backends = os.environ.get("BERTDESK_BACKENDS", ",".join(BACKENDS)).split(",")
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"BERTDESK_BACKENDS: unknown {unknown}; expected some of {BACKENDS}")
    jobs = default_jobs(backends)
    print(f"{len(backends)} backend(s), {jobs} at a time", flush=True)
    totals = dict.fromkeys(KINDS, 0)
    bad = []
    waiting, running = list(backends), []
    start = time.time()
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                running.append(Run(waiting.pop(0), argv, root))
            done = [run for run in running if run.proc.poll() is not None]
            if not done:
                time.sleep(1)
                continue
            for run in done:
                running.remove(run)
                code, counts = run.report()
                for k in totals:
                    totals[k] += counts[k]
                if code != 0 or counts["passed"] == 0:
                    bad.append(run.backend)
    finally:
        for run in running:  # interrupted: no test process outlives the runner
            run.proc.kill()
            run.proc.wait()
    print(f"\nall backends in {time.time() - start:.0f}s")
    for backend in bad:
        print(f"backend {backend}: FAILED")
    failed = totals["failed"] + totals["error"]
    print(f"all backends: {totals['passed']} passed, {failed} failed, "
          f"{totals['skipped']} skipped")
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
