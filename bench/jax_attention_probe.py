"""Which attention kernel JAX gives BERT's padded attention on a GPU, and
at what speed: `jax.nn.dot_product_attention` with XLA's implementation and
with cuDNN's (a boolean padding mask, or the same padding as key lengths),
and what `keras.ops.dot_product_attention` picks. bertdesk's JAX forward
trailed PyTorch's at seq 512 on an H200 (0.72x); this tells whether a
cuDNN call would close it. Forward calls, bf16, jitted, waited for.

    KERAS_BACKEND=jax python bench/jax_attention_probe.py
"""

import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")


def _time(fn, *args, repeats=20):
    import jax

    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main():
    import jax
    import jax.numpy as jnp
    import keras

    print("JAX", jax.__version__, jax.devices())
    heads, head_dim = 12, 64
    sizes = ((256, 128), (64, 512)) if jax.default_backend() == "gpu" else ((4, 128), (1, 512))
    for batch, seq in sizes:
        key = jax.random.PRNGKey(0)
        q, k, v = (jax.random.normal(jax.random.fold_in(key, i), (batch, seq, heads, head_dim),
                                     jnp.bfloat16) for i in range(3))
        lengths = jnp.full((batch,), seq, jnp.int32).at[::2].set(seq * 3 // 4)
        mask = (jnp.arange(seq)[None, :] < lengths[:, None])[:, None, None, :]
        scale = head_dim ** -0.5
        calls = {
            "xla, mask": lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, mask=mask, scale=scale, implementation="xla"),
            "cudnn, mask": lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, mask=mask, scale=scale, implementation="cudnn"),
            "cudnn, key lengths": lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, scale=scale, key_value_seq_lengths=lengths, implementation="cudnn"),
            "keras.ops, mask": lambda q, k, v: keras.ops.dot_product_attention(
                q, k, v, mask=mask, scale=scale),
            "keras.ops, mask, flash": lambda q, k, v: keras.ops.dot_product_attention(
                q, k, v, mask=mask, scale=scale, flash_attention=True),
        }
        reference = None
        for name, call in calls.items():
            try:
                fn = jax.jit(call)
                ms = _time(fn, q, k, v)
                out = fn(q, k, v).astype(jnp.float32)
                if reference is None:
                    reference = out
                err = float(jnp.max(jnp.abs(out - reference)))
                print(f"batch {batch} x seq {seq}: {name:<26} {ms:7.3f} ms  "
                      f"max |diff| vs xla {err:.3g}", flush=True)
            except Exception as e:  # noqa: BLE001 - a probe reports what fails
                print(f"batch {batch} x seq {seq}: {name:<26} failed: "
                      f"{type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)


if __name__ == "__main__":
    main()
