"""XLA's compiled programs kept on disk between runs (JAX, TensorFlow).

On JAX every training, evaluation and prediction step is compiled by XLA at
its first call with each batch shape, and on a CPU that is much of a short
run: one epoch of MiniLM on 2,000 SST-2 sentences spends more than half of
its wall time compiling (51 of 89 s here). The same model, batch
shapes and flags compile to the same program, so a second run of a job (the
desktop app's usual "change one setting and train again") can load them from
JAX's persistent compilation cache instead.

The command line (and through it the desktop app) turns the cache on for
every job; library users call `enable_compile_cache()` themselves. Where it
goes: `$BERTDESK_COMPILE_CACHE` if set (`off` turns it off), else
`$XDG_CACHE_HOME/bertdesk/xla` (`~/.cache/bertdesk/xla`); a directory JAX was
already given (`JAX_COMPILATION_CACHE_DIR`) is kept. Least recently used
programs are dropped beyond `max_bytes`.

On TensorFlow the steps XLA compiles (pretraining; fine-tuning with
`--jit-compile on`) go to TensorFlow's own persistent cache, the flag
`--tf_xla_persistent_cache_directory` in `$TF_XLA_FLAGS`. TensorFlow reads
those flags once, at its first operation, so the cache has to be turned on
before anything runs (the command line does it right after importing Keras).
The pretraining tests on TensorFlow took 172 s without it and 123 s with the
programs of an earlier run on disk. PyTorch runs eagerly and compiles nothing.
"""

import importlib.util
import os
import warnings
from pathlib import Path

OFF = ("", "0", "off", "false", "no", "none")
MAX_BYTES = 2 * 1024**3  # JAX's cache; TensorFlow's has no size limit
TF_FLAG = "--tf_xla_persistent_cache_directory"
# Every program, however quick to compile (JAX's default skips those under
# 1 s, for remote caches): a MiniLM epoch on 2,000 SST-2 sentences makes 62,
# 7 of them over 1 s; read back, all 62 take its second run to 41.0 s, the 7
# to 47.8 s (89.3 s with no cache). The 62 files take 4.6 MB.
MIN_COMPILE_SECONDS = 0.0


def default_compile_cache_dir():
    """Where the command line keeps compiled programs, or None when
    `$BERTDESK_COMPILE_CACHE` turns the cache off."""
    chosen = os.environ.get("BERTDESK_COMPILE_CACHE")
    if chosen is not None:
        return None if chosen.strip().lower() in OFF else Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bertdesk" / "xla"


def enable_compile_cache(directory=None, *, max_bytes=MAX_BYTES,
                         min_compile_seconds=MIN_COMPILE_SECONDS):
    """Keep JAX's compiled programs in `directory` (default:
    `default_compile_cache_dir()`) and load them from there in later runs.
    Returns the directory in use, or None: off, or Keras on PyTorch.
    A directory already given to JAX or TensorFlow stays. On TensorFlow,
    call it before the first operation runs."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _enable_tensorflow_cache(directory)
    if backend != "jax":
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    directory = default_compile_cache_dir() if directory is None else Path(directory)
    if directory is None or not _usable(directory):
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    # eviction needs file locks (`filelock`, which PyTorch already requires)
    if importlib.util.find_spec("filelock") is not None:
        jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    # JAX decides whether to use a cache at its first compile; if that has
    # happened already (without one), this makes it decide again
    compilation_cache.reset_cache()
    return directory


def _enable_tensorflow_cache(directory):
    flags = os.environ.get("TF_XLA_FLAGS", "").split()
    for flag in flags:
        if flag.startswith(TF_FLAG + "="):
            return Path(flag.split("=", 1)[1])
    directory = default_compile_cache_dir() if directory is None else Path(directory)
    if directory is None or not _usable(directory):
        return None
    os.environ["TF_XLA_FLAGS"] = " ".join([*flags, f"{TF_FLAG}={directory}"])
    return directory


def _usable(directory):
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return True
    except OSError as e:  # a cache is worth no failed job: run without one
        warnings.warn(f"{directory}: cannot keep compiled programs there ({e}); "
                      "set BERTDESK_COMPILE_CACHE to another folder, or to off", stacklevel=3)
        return False
