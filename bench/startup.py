"""Start-up: what a fresh process pays before its first model call.

Every command, test process and desktop-app training process starts by
importing Keras on its backend (through `bertdesk.lean_import`, as the
command line does). This times, in a fresh process per sample and
alternating the jobs, the pieces of that import each on its own (numpy,
ml_dtypes, each backend's framework, PyTorch's torch._dynamo, which Keras'
torch backend imports) and the whole `import_keras_lean()` per backend,
and reports medians with their spread. It also times the command line's
`bertdesk info` on a checkpoint folder (the bundled MiniLM by default), and
the desktop app's window coming up.

    .venv/bin/python bench/startup.py                  # 5 samples of each
    .venv/bin/python bench/startup.py --samples 9 --backends torch
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What each piece imports first, then the piece itself: only the piece is timed.
PIECES = {
    "numpy": ("", "import numpy"),
    "ml_dtypes": ("import numpy", "import ml_dtypes"),
    "torch": ("import numpy", "import torch"),
    "torch._dynamo": ("import torch", "import torch._dynamo"),
    "jax": ("import numpy, ml_dtypes", "import jax"),
    "tensorflow": ("import numpy, ml_dtypes", "import tensorflow"),
}
# The desktop app's window, built and shown (offscreen, with an empty home
# folder): it imports no Keras or backend until it first loads a model.
GUI_WINDOW = ("import os, tempfile\n"
              "os.environ.update(QT_QPA_PLATFORM='offscreen', BERTDESK_HOME=tempfile.mkdtemp())",
              "from PySide6.QtWidgets import QApplication\n"
              "app = QApplication([])\n"
              "from bertdesk_gui.main_window import MainWindow\n"
              "window = MainWindow()\n"
              "window.show()\n"
              "app.processEvents()")
BACKEND_PIECES = {"torch": ("torch", "torch._dynamo"), "jax": ("jax",),
                  "tensorflow": ("tensorflow",)}


def _timed(setup, statement, backend=None):
    """Seconds `statement` takes after `setup` in a fresh interpreter."""
    code = (f"{setup}\nimport time\nstart = time.perf_counter()\n{statement}\n"
            "print(time.perf_counter() - start)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if backend:
        env["KERAS_BACKEND"] = backend
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _command(args, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bertdesk", *args], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def _report(name, samples):
    print(f"{name:42s} {statistics.median(samples):6.3f} s  "
          f"[{min(samples):.3f}-{max(samples):.3f}]")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--backends", default="torch,jax,tensorflow")
    p.add_argument("--model", help="checkpoint folder for `bertdesk info` "
                                   "(default: the bundled MiniLM)")
    args = p.parse_args()
    backends = args.backends.split(",")
    if args.model is None:
        sys.path.insert(0, str(ROOT))
        import bertdesk

        args.model = bertdesk.bundled_checkpoint()

    jobs = {f"import {name}": (lambda s=setup, t=statement: _timed(s, t))
            for name, (setup, statement) in PIECES.items()
            if name in ("numpy", "ml_dtypes")
            or any(name in BACKEND_PIECES[b] for b in backends)}
    for backend in backends:
        jobs[f"import_keras_lean() on {backend}"] = (
            lambda b=backend: _timed("from bertdesk.lean_import import import_keras_lean",
                                     "import_keras_lean()", b))
        jobs[f"bertdesk info on {backend}"] = (
            lambda b=backend: _command(["info", str(args.model)], b))
    if importlib.util.find_spec("PySide6"):
        jobs["desktop app window"] = lambda: _timed(*GUI_WINDOW, "torch")
    results = {name: [] for name in jobs}
    for _ in range(args.samples):  # alternating, so drift spreads over every job
        for name, job in jobs.items():
            results[name].append(job())
    import ml_dtypes
    import numpy

    print(f"fresh processes, median of {args.samples} [min-max]; numpy {numpy.__version__}, "
          f"ml_dtypes {ml_dtypes.__version__}")
    for name, samples in results.items():
        _report(name, samples)


if __name__ == "__main__":
    main()
