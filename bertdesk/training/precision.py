"""Whether mixed precision pays on this machine.

`mixed_bfloat16` speeds training up only where the hardware multiplies
bfloat16 natively: a GPU, or a CPU with AVX512_BF16 or AMX. Elsewhere each
backend falls back to something slower than its float32 products, and on
PyTorch much slower: on an AVX2-only CPU (AMD Zen 3, measured) its bfloat16
matmul ran at 1.4 GFLOP/s against 92 for float32 (JAX 72 against 91,
TensorFlow 31 against 60). A flag in the CPU's feature list would not tell
which backend has which kernel, so this times one small product in each
precision on the current backend and device (about 0.1 s).
"""

import time

import numpy as np

_SIZE = 256  # big enough to reach the GEMM kernels, small enough for the slow path


def matmul_gflops(dtype, size=_SIZE, repeats=3):
    """GFLOP/s of a `size` x `size` `keras.ops.matmul` in `dtype` on the
    current backend and its default device (the best of `repeats` calls,
    after one untimed call that compiles)."""
    from keras import ops

    a = ops.convert_to_tensor(
        np.random.default_rng(0).standard_normal((size, size), dtype=np.float32), dtype=dtype)

    def run():
        return ops.convert_to_numpy(ops.sum(ops.cast(ops.matmul(a, a), "float32")))

    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def slow_bfloat16_warning(threshold=0.9, job="training"):
    """A warning to show the user when bfloat16 products run below
    `threshold` times float32's speed here (mixed precision would slow
    the `job` down), else None."""
    import keras

    fp32 = matmul_gflops("float32")
    bf16 = matmul_gflops("bfloat16")
    if bf16 >= threshold * fp32:
        return None
    return (f"mixed precision will slow {job} down here: bfloat16 matrix products run at "
            f"{bf16:.1f} GFLOP/s against {fp32:.1f} for float32 ({bf16 / fp32:.2f}x) on the "
            f"{keras.backend.backend()} backend (CPUs without bfloat16 instructions, AVX512_BF16 "
            f"or AMX, and JAX's CPU kernels even with them); run in float32 (without "
            f"--mixed-precision) instead")


def set_precision(mixed, report, job="training"):
    """Keras' global dtype policy for a run (`job`: "training", "prediction"):
    `mixed_bfloat16` when `mixed`, else `float32`. Under mixed precision,
    `report(text)` receives the warning when bfloat16 is slower than float32
    here."""
    import keras

    keras.config.set_dtype_policy("mixed_bfloat16" if mixed else "float32")
    warning = slow_bfloat16_warning(job=job) if mixed else None
    if warning:
        report(f"warning: {warning}")
