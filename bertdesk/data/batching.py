"""Batches padded to their own longest sequence, with length bucketing."""

import math

import keras
import numpy as np


def default_pad_multiple(jit_compile=None):
    """What batch lengths are rounded up to: 8 where a step is compiled per
    input shape (`jit_compile` true: XLA, `jax.jit`, `torch.compile`), 1
    where steps run as they come, where rounding would only compute
    padding. None: what Keras' "auto" picks for a model on this backend:
    compiled on JAX, on TensorFlow only with a GPU, eager on PyTorch.

    Measured on 2 AMD EPYC cores, MiniLM: 2,000 SST-2 sentences of a dozen
    tokens predicted in 4.56 s with 8 against 3.82 s with 1 on PyTorch
    (int8 3.50 against 3.02), 5.48 against 4.58 s on TensorFlow without XLA
    (first call 7.02 against 6.45); one fine-tuning epoch of 4,000 of them
    38.5-39.8 against 33.7-35.6 s on PyTorch, 124.4-127.1 against
    115.3-118.9 s on TensorFlow. On JAX the first prediction call took
    11.8 s with 8 and 28.9 s with 1 (a compile per length), and exact
    lengths limited to 8 by `default_max_shapes` lost to multiples of 8
    too: two MiniLM epochs on 3,600 SST-2 sentences (2 Zen 5 cores, no
    compile cache) 81.0 s against 66.9, its 9 compiles taking 54 s against
    38, the second epoch 20.3 s against 19.4."""
    return 8 if _compiles(jit_compile) else 1


def default_max_shapes(jit_compile=None):
    """How many batch lengths a dataset uses at most: `COMPILED_SHAPES`
    where a step is compiled per input shape (each length is a compile:
    4-6 s for a MiniLM training step on JAX, 2 Zen 5 cores), else 0 (no
    limit). `jit_compile` as for `default_pad_multiple`."""
    return COMPILED_SHAPES if _compiles(jit_compile) else 0


def _compiles(jit_compile):
    if jit_compile is not None:
        return bool(jit_compile)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return any(d.device_type != "CPU" for d in tf.config.list_physical_devices())
    return backend == "jax"


COMPILED_SHAPES = 8  # batch lengths a compiled step sees at most, by default


def length_boundaries(lengths, rows, max_shapes):
    """The at most `max_shapes` lengths to pad batches to, chosen so that
    the batches (the i-th with `rows[i]` rows and longest sequence
    `lengths[i]`, each padded to the shortest boundary that holds it) carry
    the fewest padding tokens; the longest length is always one. Exact, by
    dynamic programming over the distinct lengths (at most a few hundred):
    `cost[k][j]`, the fewest tokens for every batch up to the j-th length
    with k boundaries, the last at it.

    Each length a compiled step meets is a compilation (seconds to tens of
    seconds on a CPU), each padding token computed for nothing. Lengths
    rounded up to multiples of 8 (`default_pad_multiple`), then limited to
    8 of them, averaged over three epochs (MiniLM's tokenizer, batch 32,
    bucketed): 5,000 AG News texts at max length 128, 13 shapes and
    288,512 tokens an epoch -> 8 shapes and 291,413; 3,668 MRPC pairs at
    128, 10 and 212,309 -> 8 and 212,736; 2,490 RTE pairs at 256, 22 and
    194,816 -> 8 and 210,688; 8,000 SST-2 sentences at 64 have 8 anyway."""
    lengths = np.asarray(lengths)
    values, inverse = np.unique(lengths, return_inverse=True)
    if len(values) <= max_shapes:
        return values.tolist()
    weight = np.bincount(inverse, weights=np.asarray(rows, dtype=np.float64))
    below = np.concatenate([[0.0], np.cumsum(weight)])  # rows up to each length
    n = len(values)
    cost = below[1:] * values  # one boundary, at values[j]
    steps = []
    for _ in range(max_shapes - 1):
        previous, step = cost, np.full(n, -1)
        cost = previous.copy()
        for j in range(1, n):
            # previous boundary at values[i], then values[j] for the rows between
            candidates = previous[:j] + (below[j + 1] - below[1:j + 1]) * values[j]
            i = int(np.argmin(candidates))
            if candidates[i] < cost[j]:
                cost[j], step[j] = candidates[i], i
        steps.append(step)
    chosen, j = [n - 1], n - 1
    for step in reversed(steps):
        if step[j] >= 0:
            j = int(step[j])
            chosen.append(j)
    return sorted(int(values[j]) for j in chosen)


class PaddedBatches(keras.utils.PyDataset):
    """A Keras dataset over ragged encodings.

    Each batch is padded only to its own longest sequence (rounded up to a
    multiple of `pad_to_multiple`: by default 8 where Keras compiles a step
    per input shape, else 1, see `default_pad_multiple`). With
    `bucket=True`, examples are sorted by length inside windows of
    `bucket_batches` batches, so a batch holds similar lengths; the order
    of batches is shuffled each epoch (seeded per epoch, so a resumed run
    sees the same order).

    With `max_shapes`, at most that many distinct lengths are used
    (by default `COMPILED_SHAPES` where Keras compiles a step per shape,
    see `default_max_shapes`): boundaries chosen once from the data's own
    lengths (`length_boundaries`, over the first epoch's batches), each
    batch padded to the shortest that holds it; every later epoch uses the
    same ones, so a compiled step meets no new shape after the first epoch.

    With `full_batches`, the short batch (at most one per epoch) gets rows
    of padding up to `batch_size` when there are several batches, and the
    length of the nearest longer full batch, so a compiled step sees no new
    shape for it. The default does so on JAX and TensorFlow, which compile
    a step per input shape (9-17 s for a tiny model's training step on 2
    Zen 3 cores), and not on PyTorch, where the padding would only cost
    time. With targets, every batch then carries sample weights that give
    the padding rows no weight and leave the loss as it was: the real rows
    weigh `batch_size / n`, as the loss averages over the batch. Per-token
    targets need none: their padding rows hold the ignored target value.

    Args:
        encodings: list of `(token_ids, segment_ids)` int32 arrays.
        targets: array `(n, ...)` or None (prediction).
        fixed_length: pad every batch to this length instead (the
            "pad to max_length" baseline).
        pad_to_multiple: round batch lengths up to a multiple of this;
            None: `default_pad_multiple()`.
        full_batches: pad the short batch to the shape of a full one;
            None: on JAX and TensorFlow.
        max_shapes: at most this many batch lengths; 0: no limit; None:
            `default_max_shapes()`.
    """

    def __init__(self, encodings, targets=None, batch_size=32, shuffle=False, bucket=True,
                 seed=0, pad_to_multiple=None, fixed_length=None, bucket_batches=50,
                 target_pad_value=None, full_batches=None, max_shapes=None):
        super().__init__(workers=1, use_multiprocessing=False)
        self.encodings = encodings
        if targets is not None and target_pad_value is not None:
            ragged = np.empty(len(targets), dtype=object)  # one array per example
            ragged[:] = list(targets)
            targets = ragged
        self.targets = None if targets is None else np.asarray(targets)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.bucket = bucket
        self.seed = seed
        self.pad_to_multiple = (pad_to_multiple if pad_to_multiple is not None
                                else default_pad_multiple())
        self.fixed_length = fixed_length
        self.bucket_batches = bucket_batches
        self.target_pad_value = target_pad_value
        self.full_batches = (keras.backend.backend() != "torch" if full_batches is None
                             else full_batches)
        if max_shapes is not None and max_shapes < 0:
            raise ValueError(f"max_shapes={max_shapes}: expected a count >= 1, or 0 (no limit)")
        self.max_shapes = max_shapes if max_shapes is not None else default_max_shapes()
        self.lengths = np.array([len(enc[0]) for enc in encodings])
        self.boundaries = None
        self.epoch = 0
        self._make_batches()
        if self.max_shapes and not fixed_length and self.batches:
            # From the first epoch's batches, before any padding rows.
            rows = [len(b) for b in self.batches]
            self.boundaries = length_boundaries([self.batch_length(b) for b in self.batches],
                                                rows, self.max_shapes)
            self._make_batches()

    def set_epoch(self, epoch):
        self.epoch = epoch
        self._make_batches()

    def _make_batches(self):
        n = len(self.encodings)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        short = order[:0]
        if self.bucket:
            if self.shuffle:
                # the short batch's rows drawn at random, not the window's
                # shortest: sorted last, the same few rows filled it every
                # epoch, each weighing batch_size / its rows times another's
                rest = n % self.batch_size
                order, short = order[:n - rest], order[n - rest:]
            window = self.batch_size * self.bucket_batches
            chunks = [order[i:i + window] for i in range(0, len(order), window)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")]
                                    for c in chunks]) if len(order) else order
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if len(short):
            batches.append(short)
        if self.shuffle:
            rng.shuffle(batches)
        self.batches = batches
        self._lengths = [self.batch_length(b) for b in batches]
        if self.full_batches and len(batches) > 1:
            # The short batch is the last of a length-sorted window, so its
            # own length is usually one no full batch has: it takes the
            # nearest longer one, a shape already compiled.
            full = {n for b, n in zip(batches, self._lengths) if len(b) == self.batch_size}
            for i, b in enumerate(batches):
                if len(b) < self.batch_size:
                    self._lengths[i] = min((n for n in full if n >= self._lengths[i]),
                                           default=self._lengths[i])

    def __len__(self):
        return len(self.batches)

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def batch_length(self, idx):
        if self.fixed_length:
            return self.fixed_length
        longest = int(self.lengths[idx].max())
        m = self.pad_to_multiple
        length = int(math.ceil(longest / m) * m)
        if self.boundaries is not None:
            # the shortest boundary that holds it (the longest length in the
            # data is one, so there always is one)
            length = self.boundaries[int(np.searchsorted(self.boundaries, length))]
        return length

    def __getitem__(self, i):
        idx = self.batches[i]
        length = self._lengths[i]
        rows = self._rows(idx)
        token_ids = np.zeros((rows, length), np.int32)  # rows past len(idx): padding
        segment_ids = np.zeros((rows, length), np.int32)
        padding_mask = np.zeros((rows, length), np.int32)
        for row, j in enumerate(idx):
            ids, seg = self.encodings[j][:2]
            token_ids[row, :len(ids)] = ids
            segment_ids[row, :len(ids)] = seg
            padding_mask[row, :len(ids)] = 1
        x = {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
        if self.targets is None:
            return (x,)
        y = self.targets[idx]
        if self.target_pad_value is not None:  # per-token targets (batch, seq)
            padded = np.full((rows, length), self.target_pad_value, np.int32)
            for row, t in enumerate(y):
                padded[row, :len(t)] = t[:length]
            y = padded
        elif rows > len(idx):
            y = np.concatenate([y, np.zeros((rows - len(idx),) + y.shape[1:], y.dtype)])
        if not self.weighted:
            return x, y
        weights = np.zeros(rows, np.float32)
        weights[:len(idx)] = rows / len(idx)
        return x, y, weights

    @property
    def weighted(self):
        """Whether batches carry sample weights: padded to full size, with
        one target per example (per-token padding rows are ignored targets)."""
        return self.full_batches and self.target_pad_value is None

    def padded_tokens(self):
        """Token slots computed per epoch (real + padding): what bucketing saves."""
        return int(sum(self._rows(b) * n for b, n in zip(self.batches, self._lengths)))

    def _rows(self, idx):
        # One batch in all has one shape anyway: no padding rows for it.
        if self.full_batches and len(self.batches) > 1:
            return max(self.batch_size, len(idx))
        return len(idx)


def predict_encodings(model, encodings, batch_size=64):
    """`predict_batches` over `(token_ids, segment_ids)` encodings, batched
    by length, rounded and limited to so many lengths as `model` compiles
    (`default_pad_multiple`, `default_max_shapes`)."""
    return predict_batches(model, PaddedBatches(
        encodings, None, batch_size=batch_size,
        pad_to_multiple=default_pad_multiple(model.jit_compile),
        max_shapes=default_max_shapes(model.jit_compile)))


def predict_batches(model, dataset):
    """Run `model` over `dataset` batch by batch; outputs back in example
    order as a list of per-example arrays (trimmed of padding along seq when
    the output is per token) or a stacked array."""
    outputs = [None] * len(dataset.encodings)
    for i in range(len(dataset)):
        x = dataset[i][0]
        out = model.predict_on_batch(x)
        out = np.asarray(out["logits"] if isinstance(out, dict) else out, dtype=np.float32)
        for row, j in enumerate(dataset.batches[i]):
            outputs[j] = out[row]
    return outputs


def fit_input(dataset):
    """What to hand `model.fit`. On TensorFlow, Keras turns a PyDataset into a
    `tf.data` pipeline whose shapes it guesses from the first batches, and
    fails when a later batch is longer; there the batches go through a
    generator with an explicit `(batch, None)` signature instead."""
    if keras.backend.backend() != "tensorflow":
        return dataset
    import tensorflow as tf

    x_spec = {k: tf.TensorSpec((None, None), tf.int32)
              for k in ("token_ids", "segment_ids", "padding_mask")}
    y = dataset.targets
    if dataset.target_pad_value is not None:
        y_spec = tf.TensorSpec((None, None), tf.int32)
    else:
        y_spec = tf.TensorSpec((None,) + y.shape[1:], tf.as_dtype(y.dtype))
    signature = (x_spec, y_spec)
    if dataset.weighted:
        signature += (tf.TensorSpec((None,), tf.float32),)
    state = {"epoch": dataset.epoch - 1}

    def generate():
        state["epoch"] += 1  # tf.data calls this once per epoch
        dataset.set_epoch(state["epoch"])
        for i in range(len(dataset)):
            yield dataset[i]

    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(dataset))).prefetch(2)
    # No autotuning (nothing here to tune): at an epoch's end Keras drops the
    # epoch's iterator, whose deletion waits for the autotuning thread to
    # wake, which took 31-42 s in many runs (MiniLM, 4,000 SST-2 sentences,
    # epochs of 42 s: the first epoch's end in 3 of 4 two-epoch runs, the
    # last epoch's in about a third of the runs), never without it. Keras
    # turns it off likewise for its own PyDataset workers.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
