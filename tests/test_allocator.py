"""Freed memory kept by the process (bertdesk/training/allocator.py): a
large buffer freed and asked for again comes back without fresh pages; the
user's own settings are left alone; the command line's model jobs turn it on
before their backend starts."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
BUFFER = 64 * 1024 * 1024  # above glibc's largest mmap threshold (32 MB)
PAGES = BUFFER // 4096

# In a fresh process: optionally the command line's main() or
# keep_freed_memory(), then a 64 MB buffer allocated, written and freed four
# times; prints what keep_freed_memory returned and the page faults of the
# last three rounds.
FAULTS = r"""
import ctypes, json, resource, sys
how = sys.argv[1]
kept = None
if how == "keep":
    from bertdesk.training.allocator import keep_freed_memory
    kept = keep_freed_memory()
elif how.startswith("cli:"):
    from bertdesk.cli import main
    code = main(json.loads(how[4:]))
    assert code == 2, code  # the missing folder
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(%d)
    ctypes.memset(p, 1, %d)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": sum(faults[1:])}))
""" % (BUFFER, BUFFER)

pytestmark = [pytest.mark.backend_neutral,
              pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")]


def run(how, **env_changes):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "BERTDESK_ALLOCATOR", "GLIBC_TUNABLES"))}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), **env_changes)
    out = subprocess.run([sys.executable, "-c", FAULTS, how], env=env, capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_freed_buffer_comes_back_without_fresh_pages():
    plain = run("plain")
    kept = run("keep")
    # glibc's default: every round maps the 64 MB again and faults in each page
    assert plain["faults"] >= 3 * PAGES * 0.9, plain
    assert kept["kept"] is True
    assert kept["faults"] < PAGES * 0.1, kept


@pytest.mark.parametrize("env", [{"BERTDESK_ALLOCATOR": "default"},
                                 {"MALLOC_ARENA_MAX": "4"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}])
def test_the_users_own_settings_are_left_alone(env):
    result = run("keep", **env)
    assert result["kept"] is False
    assert result["faults"] >= 3 * PAGES * 0.9, result


def test_model_jobs_of_the_command_line_turn_it_on_on_every_backend(tmp_path):
    missing = str(tmp_path / "no_model")
    predict = "cli:" + json.dumps(["predict", "--model", missing, "--data", missing,
                                   "--output", str(tmp_path / "p.csv")])
    info = "cli:" + json.dumps(["info", missing])  # reads a folder, runs no model
    assert run(predict, KERAS_BACKEND="tensorflow")["faults"] < PAGES * 0.1
    assert run(predict, KERAS_BACKEND="torch")["faults"] < PAGES * 0.1
    assert run(predict, KERAS_BACKEND="jax")["faults"] < PAGES * 0.1
    assert run(info, KERAS_BACKEND="tensorflow")["faults"] >= 3 * PAGES * 0.9
