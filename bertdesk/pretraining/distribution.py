"""Scale-out on the backends' own engines, no home-made parallelism.

- JAX: `keras.distribution`. "data" is `DataParallel` over every device
  (the batch split across devices, weights replicated); "model" is
  `ModelParallel` on a (batch, model) device mesh with `bert_layout_map`
  sharding the attention and feed-forward kernels (and the embedding
  matrix) along "model". Several processes (hosts) join with
  `keras.distribution.initialize`; each then feeds its own rows of every
  global batch.
- TensorFlow: `tf.distribute.MirroredStrategy` over the GPUs, or the
  (logical) CPU devices when there are none; the model is built and
  compiled in its scope and Keras' `fit` splits each batch.
- PyTorch: not offered here (Keras has no distribution API for it).

On one CPU, JAX shows several devices with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` and TensorFlow with
logical devices (`cpu_devices`); both must be set before the backend starts.
"""

import contextlib
import os

from bertdesk.data.tables import DataError


def cpu_devices(count):
    """Ask the backend (before it starts) for `count` CPU devices."""
    if count and count > 1:
        flag = f"--xla_force_host_platform_device_count={count}"
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
        os.environ["BERTDESK_TF_CPU_DEVICES"] = str(count)


def bert_layout_map(mesh, vocabulary_size=None):
    """Tensor-parallel layout (Megatron style) for bertdesk's variable paths:
    column-split q/k/v and the first feed-forward kernel, row-split the
    attention output and second feed-forward kernel, vocabulary rows of the
    embedding split where the model axis divides `vocabulary_size` (JAX
    refuses an uneven split: Google's 30,522 pieces over 4 devices);
    everything else replicated."""
    import keras

    layout = keras.distribution.LayoutMap(mesh)
    if vocabulary_size is None or vocabulary_size % mesh.shape[-1] == 0:
        layout[r".*token_embedding/embeddings"] = ("model", None)
    layout[r".*attention/qkv/kernel"] = (None, "model")
    layout[r".*attention/qkv/bias"] = ("model",)
    layout[r".*attention_output/kernel"] = ("model", None)
    layout[r".*intermediate/kernel"] = (None, "model")
    layout[r".*intermediate/bias"] = ("model",)
    layout[r".*encoder_layer_\d+/output/kernel"] = ("model", None)
    return layout


def initialize_processes(coordinator, num_processes, process_id):
    """Join a multi-process JAX run (before any other JAX work)."""
    import keras

    if keras.backend.backend() != "jax":
        raise DataError("several processes (--num-processes) need the JAX backend")
    keras.distribution.initialize(coordinator, num_processes, process_id)


def configure_distribution(config, log, vocabulary_size=None):
    """Set up `config.distribution`; returns (scope, (process index,
    process count)): build and compile the model inside `scope()`."""
    import keras

    backend = keras.backend.backend()
    if config.distribution == "none":
        return contextlib.nullcontext, (0, 1)
    if backend == "jax":
        import jax

        devices = keras.distribution.list_devices()
        if config.batch_size % len(devices):
            raise DataError(f"--batch-size {config.batch_size} does not split evenly over "
                            f"{len(devices)} devices")
        if config.distribution == "data":
            dist = keras.distribution.DataParallel(devices=devices)
            log(f"data parallel over {len(devices)} device(s) (JAX, keras.distribution)")
        else:
            mp = config.model_parallel
            if len(devices) % mp:
                raise DataError(f"{len(devices)} devices do not split into groups of "
                                f"--model-parallel {mp}")
            mesh = keras.distribution.DeviceMesh((len(devices) // mp, mp), ["batch", "model"],
                                                 devices)
            dist = keras.distribution.ModelParallel(
                layout_map=bert_layout_map(mesh, vocabulary_size), batch_dim_name="batch")
            log(f"model parallel: mesh {len(devices) // mp} (batch) x {mp} (model) "
                "(JAX, keras.distribution)")
            if vocabulary_size is not None and vocabulary_size % mp:
                log(f"the token embedding is replicated: --model-parallel {mp} does not divide "
                    f"its {vocabulary_size:,} rows")
        if jax.process_count() > 1:
            # each process reads its own rows of every batch (PretrainingData part=)
            dist.auto_shard_dataset = False
        keras.distribution.set_distribution(dist)
        return contextlib.nullcontext, (jax.process_index(), jax.process_count())
    if backend == "tensorflow":
        if config.distribution == "model":
            raise DataError("--distribution model needs the JAX backend; TensorFlow offers "
                            "data parallel (MirroredStrategy) here")
        import tensorflow as tf

        tensorflow_cpu_devices()
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
        log(f"data parallel over {len(devices)} device(s) (TensorFlow MirroredStrategy)")
        return strategy.scope, (0, 1)
    raise DataError(f"--distribution {config.distribution} needs the JAX or TensorFlow "
                    "backend (Keras has no distribution API for PyTorch)")


def describe_placement(model):
    """One line on how the first feed-forward kernel is placed (JAX): its
    shard shape and the devices holding it."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    v = next(v for v in model.trainable_variables if v.path.endswith("intermediate/kernel"))
    sharding = v.value.sharding
    shard = sharding.shard_shape(v.value.shape)
    devices = len(sharding.device_set)
    kind = "replicated" if tuple(shard) == tuple(v.value.shape) else "sharded"
    return (f"{v.path} {tuple(v.value.shape)}: {kind}, shards of {tuple(shard)} on "
            f"{devices} device(s)")


def tensorflow_cpu_devices():
    """Split TensorFlow's CPU into the logical devices `cpu_devices` asked
    for (call right after importing TensorFlow, before it runs anything)."""
    count = int(os.environ.get("BERTDESK_TF_CPU_DEVICES", "0") or 0)
    if count > 1:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:  # TensorFlow already started: keep its devices
            pass
