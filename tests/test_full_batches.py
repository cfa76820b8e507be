"""The short batch padded to the full batch size (no new shape for a
compiled step), with sample weights that leave every task's loss as the
short batch's."""

import keras
import numpy as np
import pytest

from bertdesk.data.batching import PaddedBatches, default_pad_multiple, predict_encodings
from bertdesk.tasks.bert_token_classifier import IGNORE_INDEX
from bertdesk.training.tasks import ClassifyTask, NerTask, QaTask


def encodings(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for length in rng.integers(3, 12, n):
        out.append((rng.integers(5, 100, length).astype(np.int32),
                    np.zeros(length, np.int32)))
    return out


def both(targets, **kw):
    # (lengths rounded as on the backends that compile: the short batch's
    # length is then a full batch's, whatever its own longest)
    kw.setdefault("pad_to_multiple", 8)
    enc = encodings(10)
    return (PaddedBatches(enc, targets, batch_size=4, full_batches=False, **kw),
            PaddedBatches(enc, targets, batch_size=4, full_batches=True, **kw))


def test_default_pads_only_where_a_step_is_compiled_per_shape():
    assert PaddedBatches(encodings(3)).full_batches == (keras.backend.backend() != "torch")


def keras_compiles_by_default():
    """What Keras' jit_compile="auto" picks on this backend and machine."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return keras.backend.backend() == "jax"


def test_lengths_are_rounded_only_where_a_step_is_compiled_per_shape():
    """Where Keras runs a model's steps as they come (PyTorch; TensorFlow
    without XLA, its default on a CPU) a batch is as long as its longest
    sequence; where it compiles a step per shape (JAX) lengths round up to
    a multiple of 8, and at most `COMPILED_SHAPES` of them; a multiple
    given is kept."""
    from bertdesk.data import batching

    enc = [(np.arange(5, 5 + n, dtype=np.int32), np.zeros(n, np.int32)) for n in (9, 3, 11)]
    ds = PaddedBatches(enc, None, batch_size=3)
    assert ds[0][0]["token_ids"].shape == (3, 16 if keras_compiles_by_default() else 11)
    assert PaddedBatches(enc, None, batch_size=3, pad_to_multiple=4)[0][0]["token_ids"].shape \
        == (3, 12)
    assert default_pad_multiple(True) == 8 and default_pad_multiple(False) == 1
    assert batching.default_max_shapes(True) == batching.COMPILED_SHAPES
    assert batching.default_max_shapes(False) == 0
    assert ds.max_shapes == (batching.COMPILED_SHAPES if keras_compiles_by_default() else 0)


class RecordingModel:
    """Takes predict_on_batch's inputs; answers one logit per position."""

    def __init__(self, jit_compile):
        self.jit_compile = jit_compile
        self.shapes = []

    def predict_on_batch(self, x):
        self.shapes.append(x["token_ids"].shape)
        return {"logits": x["token_ids"].astype(np.float32)}


@pytest.mark.parametrize("jit_compile", [False, True])
def test_prediction_pads_lengths_as_the_model_compiles(jit_compile):
    """A compiled model's prediction batches round to 8, at most
    `COMPILED_SHAPES` lengths of them; an eager one's are as they come;
    outputs come back per example, in order."""
    from bertdesk.data import batching

    lengths = (9, 3, 11, 2) + tuple(range(20, 130, 5))
    enc = [(np.arange(5, 5 + n, dtype=np.int32), np.zeros(n, np.int32)) for n in lengths]
    model = RecordingModel(jit_compile)
    out = predict_encodings(model, enc, batch_size=2)
    widths = {shape[1] for shape in model.shapes}
    if jit_compile:
        assert len(widths) == batching.COMPILED_SHAPES  # 14 multiples of 8 without the limit
        assert all(w % 8 == 0 for w in widths)
    else:
        assert len(widths) == 13  # each pair's own longest
    for (ids, _), row in zip(enc, out):
        np.testing.assert_array_equal(row[:len(ids)], ids)


def test_short_batch_gets_padding_rows_without_weight():
    short, full = both(np.arange(10, dtype=np.int32))
    assert [len(b) for b in short.batches] == [4, 4, 2]
    for i in range(len(short)):
        (x, y), (fx, fy, w) = short[i], full[i]
        n = len(y)
        assert all(v.shape[0] == 4 for v in fx.values()) and fy.shape == (4,)
        for key in x:
            np.testing.assert_array_equal(fx[key][:n], x[key])
            assert not fx[key][n:].any()  # padding rows: no tokens, masked out
        np.testing.assert_array_equal(fy[:n], y)
        # the loss averages over the batch: real rows weigh batch / n
        np.testing.assert_array_equal(w, [4 / n] * n + [0] * (4 - n))
    assert full.padded_tokens() > short.padded_tokens()


def test_a_single_short_batch_stays_as_it_is():
    ds = PaddedBatches(encodings(3), np.arange(3), batch_size=4, full_batches=True)
    x, y, w = ds[0]
    assert x["token_ids"].shape[0] == 3 and y.shape == (3,)
    np.testing.assert_array_equal(w, [1, 1, 1])


def test_per_token_padding_rows_are_ignored_targets():
    targets = [np.arange(len(e[0]), dtype=np.int32) % 3 for e in encodings(10)]
    short, full = both(targets, target_pad_value=IGNORE_INDEX)
    (x, y), (fx, fy) = short[2], full[2]  # no weights: the loss masks ignored targets
    assert fy.shape[0] == 4
    np.testing.assert_array_equal(fy[:2], y)
    assert (fy[2:] == IGNORE_INDEX).all()


def test_prediction_batches_are_padded_and_trimmed():
    from bertdesk.data.batching import predict_batches

    class RowSum:  # a model whose output row depends on its input row only
        def predict_on_batch(self, x):
            return (x["token_ids"] * x["padding_mask"]).sum(1, keepdims=True).astype("float32")

    enc = encodings(10)
    outs = [predict_batches(RowSum(), PaddedBatches(enc, None, batch_size=4, full_batches=f))
            for f in (False, True)]
    np.testing.assert_array_equal(np.stack(outs[0]), np.stack(outs[1]))
    np.testing.assert_array_equal(np.stack(outs[1])[:, 0], [e[0].sum() for e in enc])


CASES = {
    "single_label": (ClassifyTask(), {"problem_type": "single_label"},
                     lambda r: (r.integers(0, 3, (2,)), r.normal(size=(2, 3)))),
    "multi_label": (ClassifyTask(), {"problem_type": "multi_label"},
                    lambda r: (r.integers(0, 2, (2, 3)).astype("float32"),
                               r.normal(size=(2, 3)))),
    "regression": (ClassifyTask(), {"problem_type": "regression"},
                   lambda r: (r.normal(size=(2, 1)), r.normal(size=(2, 1)))),
    "ner": (NerTask(), {"labels": ["O", "B-X", "I-X"]},
            lambda r: (np.where(r.random((2, 6)) < 0.3, IGNORE_INDEX, r.integers(0, 3, (2, 6))),
                       r.normal(size=(2, 6, 3)))),
    "qa": (QaTask(), {}, lambda r: (r.integers(0, 6, (2, 2)), r.normal(size=(2, 6, 2)))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_weighted_full_batch_loss_is_the_short_batch_loss(case):
    task, head, draw = CASES[case]
    rng = np.random.default_rng(1)
    y, pred = draw(rng)
    per_token = case == "ner"
    # as PaddedBatches pads: ignored or zero targets, whatever the model outputs
    pad_y = np.full((2,) + y.shape[1:], IGNORE_INDEX if per_token else 0, y.dtype)
    full_y = np.concatenate([y, pad_y])
    full_pred = np.concatenate([pred, 10 * rng.normal(size=pred.shape)])
    weights = None if per_token else np.array([2.0, 2.0, 0.0, 0.0], "float32")
    loss = task.loss(head)
    short = keras.ops.convert_to_numpy(loss(y, pred.astype("float32")))
    full = keras.ops.convert_to_numpy(loss(full_y, full_pred.astype("float32"),
                                           sample_weight=weights))
    np.testing.assert_allclose(full, short, rtol=1e-5)
    assert np.isfinite(short) and short > 0


def test_short_batch_takes_the_nearest_longer_full_batch_length():
    # lengths 24 x4, 16 x4, 8 x2 sorted into batches of 4: the short batch
    # (length 8) is padded to 16, a shape the full batches already have
    enc = [(np.ones(n, np.int32), np.zeros(n, np.int32)) for n in [20] * 4 + [14] * 4 + [5] * 2]
    short = PaddedBatches(enc, None, batch_size=4, full_batches=False, pad_to_multiple=8)
    full = PaddedBatches(enc, None, batch_size=4, full_batches=True, pad_to_multiple=8)
    assert [short[i][0]["token_ids"].shape for i in range(3)] == [(4, 24), (4, 16), (2, 8)]
    assert [full[i][0]["token_ids"].shape for i in range(3)] == [(4, 24), (4, 16), (4, 16)]
    x = full[2][0]
    assert x["padding_mask"].sum() == 10 and x["padding_mask"][:2, :5].all()
    # a short batch longer than every full one keeps its own length
    enc = [(np.ones(n, np.int32), np.zeros(n, np.int32)) for n in [5] * 4 + [20] * 2]
    full = PaddedBatches(enc, None, batch_size=4, full_batches=True, bucket=False,
                         pad_to_multiple=8)
    assert [full[i][0]["token_ids"].shape for i in range(2)] == [(4, 8), (4, 24)]


# === At most so many batch lengths ===

def _padded_tokens(lengths, rows, boundaries):
    return sum(r * min(b for b in boundaries if b >= n) for n, r in zip(lengths, rows))


@pytest.mark.backend_neutral
@pytest.mark.parametrize("seed", range(6))
def test_length_boundaries_pad_the_fewest_tokens(seed):
    """Against every choice of boundaries (the longest length always one)."""
    import itertools

    from bertdesk.data.batching import length_boundaries

    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 40, 25)
    rows = rng.integers(1, 33, 25)
    values = sorted(set(lengths.tolist()))
    for k in (1, 2, 3, 4):
        chosen = length_boundaries(lengths, rows, k)
        assert len(chosen) <= k and chosen[-1] == max(values)
        assert set(chosen) <= set(values)
        best = min(_padded_tokens(lengths, rows, list(c) + [values[-1]])
                   for c in itertools.combinations(values[:-1], k - 1))
        assert _padded_tokens(lengths, rows, chosen) == best
    assert length_boundaries(lengths, rows, len(values)) == values  # no limit reached


@pytest.mark.backend_neutral
def test_batches_keep_to_the_boundaries_in_every_epoch():
    rng = np.random.default_rng(0)
    enc = [(np.ones(n, np.int32), np.zeros(n, np.int32)) for n in rng.integers(2, 120, 400)]
    ds = PaddedBatches(enc, np.zeros(400), batch_size=16, shuffle=True, pad_to_multiple=1,
                       max_shapes=5, full_batches=False)
    assert len(ds.boundaries) == 5 and ds.boundaries[-1] == max(len(e[0]) for e in enc)
    seen = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            x, _ = ds[i]
            longest = max(len(enc[j][0]) for j in ds.batches[i])
            length = x["token_ids"].shape[1]
            assert length == min(b for b in ds.boundaries if b >= longest)
            seen.add(length)
    assert seen <= set(ds.boundaries)
    unlimited = PaddedBatches(enc, np.zeros(400), batch_size=16, shuffle=True,
                              pad_to_multiple=1, full_batches=False, max_shapes=0)
    assert unlimited.boundaries is None
    assert len(set(unlimited._lengths)) > 5
    assert ds.padded_tokens() > unlimited.padded_tokens()  # what fewer shapes cost


@pytest.mark.backend_neutral
def test_rounded_lengths_are_limited_by_default(monkeypatch):
    """Rounding to 8 alone gave a length per multiple of 8; by default a
    compiled step meets at most COMPILED_SHAPES of them."""
    from bertdesk.data import batching
    from bertdesk.data.batching import COMPILED_SHAPES

    monkeypatch.setattr(batching, "_compiles", lambda jit_compile: True)
    rng = np.random.default_rng(1)
    enc = [(np.ones(n, np.int32), np.zeros(n, np.int32)) for n in rng.integers(2, 250, 600)]
    ds = PaddedBatches(enc, None, batch_size=16, pad_to_multiple=8)
    assert ds.max_shapes == COMPILED_SHAPES
    assert len(set(ds._lengths)) <= COMPILED_SHAPES
    assert all(n % 8 == 0 for n in ds._lengths)
    assert len(set(PaddedBatches(enc, None, batch_size=16, pad_to_multiple=8,
                                 max_shapes=100)._lengths)) > COMPILED_SHAPES
    assert PaddedBatches(enc, None, batch_size=16, pad_to_multiple=8,
                         max_shapes=0).boundaries is None  # no limit
    with pytest.raises(ValueError, match="max_shapes=-1"):
        PaddedBatches(enc, None, max_shapes=-1)
