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


# Settings by which the user chose glibc's behaviour, which bertdesk leaves alone.
USERS_SETTINGS = [{"BERTDESK_ALLOCATOR": "default"}, {"MALLOC_ARENA_MAX": "4"},
                  {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}]


def run(how, script=FAULTS, **env_changes):
    """`script` in a fresh process given `how`, with glibc's own settings
    and bertdesk's cleared from the environment, then `env_changes`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "BERTDESK_ALLOCATOR", "GLIBC_TUNABLES"))}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), **env_changes)
    out = subprocess.run([sys.executable, "-c", script, how], env=env, capture_output=True,
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


@pytest.mark.parametrize("env", USERS_SETTINGS)
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


# In a fresh process: optionally lift_dynamic_thresholds() or a float32
# product through bertdesk's PyTorch CPU path, then a 12 MB block freed (so
# glibc's thresholds settle at 12 MB: trim above 24 MB, the way a small
# model's activations set them) and four rounds of three 12 MB buffers
# written and freed; prints what the call returned and the page faults of
# the last three rounds.
HEAP_ROUNDS = r"""
import ctypes, json, resource, sys
how = sys.argv[1]
lifted = None
if how == "lift":
    from bertdesk.training.allocator import lift_dynamic_thresholds
    lifted = lift_dynamic_thresholds()
elif how == "torch product":
    import torch
    from bertdesk.layers import cpu_products
    x = torch.randn(64, 32)
    with torch.no_grad():
        cpu_products.linear(x, torch.randn(32, 16), torch.zeros(16))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
MB = 1 << 20
p = libc.malloc(12 * MB)
ctypes.memset(p, 1, 12 * MB)
libc.free(p)
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(12 * MB) for _ in range(3)]
    for block in blocks:
        ctypes.memset(block, 1, 12 * MB)
    for block in blocks:
        libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"lifted": lifted, "faults": sum(faults[1:])}))
"""
ROUND_PAGES = 3 * 12 * (1 << 20) // 4096


def run_heap_rounds(how, **env_changes):
    return run(how, HEAP_ROUNDS, **{"KERAS_BACKEND": "torch", **env_changes})


def test_lifted_thresholds_keep_a_heap_of_up_to_64_mb():
    """glibc's own dynamic thresholds, settled at 12 MB, trim 36 MB of freed
    heap and fault it in again every round; lifted to their ceiling, the heap
    keeps it (and buffers below 32 MB still come from it)."""
    plain = run_heap_rounds("plain")
    assert plain["faults"] >= 3 * ROUND_PAGES * 0.9, plain
    lifted = run_heap_rounds("lift")
    assert lifted["lifted"] is True
    assert lifted["faults"] < ROUND_PAGES * 0.1, lifted


def test_the_first_cpu_product_lifts_the_thresholds():
    assert run_heap_rounds("torch product")["faults"] < ROUND_PAGES * 0.1
    left = run_heap_rounds("torch product", BERTDESK_ALLOCATOR="default")
    assert left["faults"] >= 3 * ROUND_PAGES * 0.9, left


@pytest.mark.parametrize("env", USERS_SETTINGS)
def test_lifting_leaves_the_users_own_settings_alone(env):
    result = run_heap_rounds("lift", **env)
    assert result["lifted"] is False
    assert result["faults"] >= 3 * ROUND_PAGES * 0.9, result
