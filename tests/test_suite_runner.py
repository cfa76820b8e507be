"""`tests/run_all_backends.py`, the runner behind `make test` and `.ci/run`:
backends side by side, every failure reported, the exit code right."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import run_all_backends as runner

pytestmark = pytest.mark.backend_neutral

RUNNER = Path(runner.__file__)

# A test file outside the suite (no conftest, no Keras import): it records
# when it ran under which backend, and fails where told to.
PROBE = """
import json, os, time
from pathlib import Path

def test_probe():
    start = time.time()
    time.sleep(2.0)
    backend = os.environ["KERAS_BACKEND"]
    Path(os.environ["PROBE_OUT"], backend + ".json").write_text(
        json.dumps({"start": start, "end": time.time(),
                    "xla_flags": os.environ.get("XLA_FLAGS")}))
    assert backend not in os.environ.get("PROBE_FAIL", "").split(",")
"""


def run_probe(tmp_path, jobs, fail=""):
    probe = tmp_path / "probe_check.py"
    probe.write_text(PROBE)
    out = tmp_path / f"out-{jobs}"
    out.mkdir()
    env = {**os.environ, "BERTDESK_BACKENDS": "jax,tensorflow", "BERTDESK_TEST_JOBS": str(jobs),
           "PROBE_OUT": str(out), "PROBE_FAIL": fail}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, str(RUNNER), str(probe)], env=env,
                          capture_output=True, text=True, timeout=300)
    times = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return proc, times


def test_two_jobs_run_the_backends_side_by_side_and_one_job_in_turn(tmp_path):
    proc, times = run_probe(tmp_path, jobs=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(times) == {"jax", "tensorflow"}
    assert times["jax"]["start"] < times["tensorflow"]["end"]  # the two sleeps overlap
    assert times["tensorflow"]["start"] < times["jax"]["end"]
    assert times["jax"]["xla_flags"] == runner.XLA_FLAGS
    assert "all backends: 2 passed, 0 failed" in proc.stdout
    # each backend's output comes whole, under its own header
    for backend in ("jax", "tensorflow"):
        block = proc.stdout.split(f"===== KERAS_BACKEND={backend} =====\n")[1]
        block = block.split("===== KERAS_BACKEND=")[0]
        assert "test_probe" in block  # its slowest-durations line
        assert f"[{backend}] exit 0 in" in block and "1 passed in" in block

    proc, times = run_probe(tmp_path, jobs=1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert times["jax"]["end"] <= times["tensorflow"]["start"]  # in turn, JAX first


def test_a_failing_backend_fails_the_run_and_is_named(tmp_path):
    proc, times = run_probe(tmp_path, jobs=2, fail="tensorflow")
    assert proc.returncode == 1
    assert set(times) == {"jax", "tensorflow"}  # the other backend still ran to the end
    assert "backend tensorflow: FAILED" in proc.stdout
    assert "backend jax: FAILED" not in proc.stdout
    assert "all backends: 1 passed, 1 failed" in proc.stdout


def test_jobs_and_backends_are_checked(monkeypatch):
    monkeypatch.setenv("BERTDESK_TEST_JOBS", "0")
    with pytest.raises(SystemExit, match="BERTDESK_TEST_JOBS='0'"):
        runner.default_jobs(runner.BACKENDS)
    monkeypatch.setenv("BERTDESK_TEST_JOBS", "5")
    assert runner.default_jobs(runner.BACKENDS) == 3  # never more than one per backend
    monkeypatch.delenv("BERTDESK_TEST_JOBS")
    assert 1 <= runner.default_jobs(runner.BACKENDS) <= 3
    monkeypatch.setenv("BERTDESK_BACKENDS", "jax,pytorch")
    with pytest.raises(SystemExit, match="unknown \\['pytorch'\\]"):
        runner.main([])


def test_a_containers_cpu_limit_caps_the_jobs(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")  # docker --cpus=2
    assert runner.usable_cpus(cpu_max) == min(2, len(os.sched_getaffinity(0)))
    cpu_max.write_text("50000 100000\n")  # half a CPU still runs one backend
    assert runner.usable_cpus(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert runner.usable_cpus(cpu_max) == len(os.sched_getaffinity(0))
    assert runner.usable_cpus(tmp_path / "missing") == len(os.sched_getaffinity(0))


def test_pytest_summaries_are_counted():
    line = "3 failed, 310 passed, 21 skipped, 2 errors in 1280.03s (0:21:20)"
    assert runner.parse_summary("....\n" + line) == (
        line, {"passed": 310, "failed": 3, "skipped": 21, "error": 2})
    assert runner.parse_summary("") == ("", dict.fromkeys(runner.KINDS, 0))
