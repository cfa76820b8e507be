"""Freed memory kept by the process for its next step (glibc's malloc).

A training or prediction step frees the same large buffers it will ask for
again at the next step. glibc hands every allocation above 32 MB (and, by
default, many smaller ones) straight back to the kernel when it is freed, and
the next step's buffers come back as fresh pages, each zero-filled by the
kernel on first touch. On JAX and TensorFlow that is most of what the CPU
spends outside the products: a JAX training step of a MiniLM-sized model at
batch 16 x 128 took 64,000 page faults (250 MB of fresh pages; `strace` shows
one `mmap`/`munmap` pair per step, XLA's temporaries) and a third of its time
in the kernel.

`keep_freed_memory()` tells glibc to keep freed memory in the process
instead (`mallopt`): no allocation is served by its own `mmap`
(`M_MMAP_MAX = 0`), the heap is never trimmed (`M_TRIM_THRESHOLD`), and
threads share two arenas (`M_ARENA_MAX = 2`). Without an arena limit the
thread pools' buffers still come back as fresh pages (a JAX epoch below: 4.0
million faults, as many as glibc's defaults); with one arena XLA's compiler
threads wait on it and a JAX job's first, compiling run got slower. The
process's resident memory then stays at its high-water mark until it exits,
which for a job process is where it is at its peak anyway.

Measured on 2 AMD EPYC cores (fresh processes, alternating):

- MiniLM, one epoch of 2,000 SST-2 sentences (`finetune`'s own run), wall
  time and page faults, default -> kept:
  - TensorFlow: 83.0-86.3 s -> 63.5-65.1 s with one arena (23.9 million
    faults -> 0.7 million; 62 s of kernel time -> 6 s; peak 1,680 ->
    1,818-1,879 MB); with two, 62.5-66.9 s against 66.6 s with one in the
    same hour (1.3-3.0 million faults).
  - JAX, programs from the compile cache: 46.3-49.7 s -> 40.9-52.9 s
    (medians 47.3 -> 41.0 s, 3 runs each; 4.2 million faults -> 0.5-0.6
    million; kernel time 12 s -> 2-3 s; peak 1,900-1,940 -> 1,995-2,088 MB).
  - JAX with an empty compile cache (a job's first run): 107.1-130.7 s
    (7 runs, median 120.2) -> 110.0-149.5 s with two arenas (5 runs, median
    121.4): the same; with one arena 128.6-148.5 s (4 runs), slower.
  - PyTorch: 24.6-26.4 s -> 23.7-26.1 s (no change) for 170-210 MB more
    peak memory.
- `bertdesk pretrain --preset mini --max-steps 80 --batch-size 16` (the whole
  command, two runs each way): TensorFlow 99.6-103.2 s -> 62.0-66.9 s, JAX
  54.2-64.3 s -> 45.0-50.5 s.
- PyTorch, measured on 2 Intel Xeon cores (Sapphire Rapids, in a VM, where a
  page fault costs about a microsecond): the same pretraining command 41.7-42.7
  s -> 35.9-37.4 s (5.6-6.0 million faults -> 0.28 million, kernel time 11 s
  -> 1.4 s, peak 1,106-1,114 -> 1,189-1,190 MB, three runs each way); a
  training step of the base shape at batch 16 x 128 (`bench/speed.py`'s
  job) 4.07 -> 3.73 s with a lower peak (3,707 -> 3,529 MB), of the mini
  shape 199-205 -> 189-191 ms; the SST-2 epoch above 18.6-19.6 s -> 18.7-19.4 s
  (the same; its short bucketed batches reuse the heap anyway) for 100-160 MB
  more. glibc trims the heap's top whenever 64 MB is free there (its dynamic
  threshold) and serves buffers above 32 MB (base's 94 MB embedding gradient)
  from `mmap`. Fixing only the thresholds (`MALLOC_TRIM_THRESHOLD_`,
  `MALLOC_MMAP_THRESHOLD_=32 MB`) kept 4.3-4.7 million of the pretraining
  faults (39.8-41.1 s).
- `bench/speed.py`, bertdesk's mini jobs (batch 16 x 128), sequences/s, one
  arena: JAX forward 110.5 -> 146.0 and training 37.6 -> 42.8 (64,583 -> 48
  faults per step); TensorFlow forward 105.0 -> 123.3, training 39.1 ->
  43.2; TF + XLA forward 155.0 -> 169.2, training 39.6 -> 43.1.

The command line (and so the desktop app's jobs) calls it first thing in
every job that runs a model, on every backend, before the backend starts its
threads; it is process-wide, so the library never calls it on import. A
script of one's own can call it at its top. It changes nothing where the user chose: `BERTDESK_ALLOCATOR=default`,
glibc's own `MALLOC_*` variables or `GLIBC_TUNABLES` set, or not glibc
(macOS, Windows, musl).

Without it, `lift_dynamic_thresholds()` takes a much smaller step, the one
glibc takes itself after freeing a 32 MiB buffer; bertdesk's PyTorch CPU
path calls it at its first product.
"""

import ctypes
import ctypes.util
import functools
import os
import platform

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# The largest trim threshold mallopt takes (an int): never trim in practice.
NEVER_TRIM = 2**31 - 1
# Two arenas: with no limit the thread pools' buffers still fault in fresh
# pages; with one, XLA's compiler threads wait on it (see the docstring).
SETTINGS = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: NEVER_TRIM, M_ARENA_MAX: 2}
USER_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                  "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST")
OFF = ("default", "off", "0", "false", "no")


# === Settings ===
def keep_freed_memory():
    """Make glibc keep freed memory in this process for reuse (see the module
    docstring). Call it before the Keras backend starts (its thread pools
    pick their arena at their first allocation).

    Returns True when the settings were applied, False when left alone: the
    user's choice (`BERTDESK_ALLOCATOR=default`, `MALLOC_*` variables,
    `GLIBC_TUNABLES`), or a C library other than glibc.
    """
    if _users_choice():
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())


@functools.cache
def lift_dynamic_thresholds():
    """Free one block just under glibc's 32 MiB ceiling for its dynamic
    thresholds, once per process: glibc then serves buffers up to that size
    from its heap and trims the heap's top only when 64 MiB are free there.
    Returns whether the block was freed (False where `keep_freed_memory`
    leaves glibc alone, or not 64-bit glibc).

    glibc starts by serving every buffer above 128 KiB with its own `mmap`
    and, each time it frees such a buffer, raises that threshold to the
    buffer's size and the trim threshold to twice it, up to 32 MiB (its
    documented dynamic thresholds, `mallopt(3)`). PyTorch's eager CPU
    passes free most of what they allocate at every call, so a small
    model's thresholds settle at its largest activation (BERT-mini's 8 MiB
    feed-forward buffer, trim 16 MiB) and, in some processes, its heap is
    trimmed and faulted in again at every call: BERT-mini's float32 forward
    pass at 16 x 128 took 4,100-5,500 fresh pages a call (40.9-42.9 ms;
    1-147 and 35.6-36.3 ms in the processes that escaped), 0-256 after this
    (34.8-36.4 ms); its training step 16,000-16,800 pages (138.8-139.1 ms)
    against 100-3,300 (120.3-121.9 ms); its bf16 forward pass 24.7-25.7 ->
    21.9-22.1 ms; BERT-base's float32 forward pass 849-850 -> 812-832 ms;
    peak memory the same to 3% (2 AMD Zen 5 cores, fresh processes
    alternating). It is what glibc does
    itself after freeing any buffer of that size, and much less than
    `keep_freed_memory` (the command line's): buffers above 32 MiB still
    come from `mmap`, and the heap is still trimmed. The first float32 or
    bfloat16 CPU product bertdesk routes (`layers.cpu_products`) calls it."""
    if _users_choice() or ctypes.sizeof(ctypes.c_long) != 8:
        return False
    libc = _glibc()
    if libc is None:
        return False
    malloc, free = libc.malloc, libc.free
    malloc.argtypes, malloc.restype = (ctypes.c_size_t,), ctypes.c_void_p
    free.argtypes, free.restype = (ctypes.c_void_p,), None
    block = malloc(DYNAMIC_CEILING - (64 << 10))  # its chunk, header included, under it
    if not block:
        return False
    free(block)
    return True


# glibc's ceiling for its dynamic mmap threshold on 64-bit systems
# (DEFAULT_MMAP_THRESHOLD_MAX: 4 MiB times sizeof(long)).
DYNAMIC_CEILING = 32 << 20


def _users_choice():
    """Whether the user chose glibc's settings: `BERTDESK_ALLOCATOR=default`
    (or off), any of glibc's `MALLOC_*` variables, or malloc tunables."""
    if os.environ.get("BERTDESK_ALLOCATOR", "").strip().lower() in OFF:
        return True
    if any(name in os.environ for name in USER_VARIABLES):
        return True
    return "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


def _glibc_mallopt():
    """glibc's `mallopt`, or None on any other C library."""
    libc = _glibc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
    return mallopt


def _glibc():
    """The C library where it is glibc, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
