"""`skip_padding` (`layers.PackedTokens`): on eager PyTorch the backbone runs
everything but attention on the real tokens alone, with the same numbers
there as the padded call (dropout masks included) and zeros at the padding;
on JAX and TensorFlow it changes nothing."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, TINY, random_batch
from harness import rng_restore, rng_snapshot, to_np

from bertdesk import BertBackbone
from bertdesk.layers import PackedTokens
from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer
from bertdesk.tasks.bert_text_classifier import BertTextClassifier
from bertdesk.tasks.bert_token_classifier import BertTokenClassifier

LENGTHS = [10, 4, 7, 1]  # one row without padding, one with only [CLS]
PACKS = BACKEND == "torch"


def _batch():
    return random_batch(batch=4, seq=10, lengths=LENGTHS)


def _perturbed(model, seed=3):
    """Weights away from their initial values (zero biases, unit
    LayerNorm), so that every term of the computation shows."""
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.1 * rng.standard_normal(w.shape).astype(w.dtype)
                       for w in model.get_weights()])


def _packings(monkeypatch):
    """A list that records every `PackedTokens.of` answer that packs."""
    made, of = [], PackedTokens.of.__func__

    def recording(cls, *args):
        packed = of(cls, *args)
        if packed is not None:
            made.append(packed)
        return packed
    monkeypatch.setattr(PackedTokens, "of", classmethod(recording))
    return made


@pytest.mark.parametrize("outputs", [{}, {"output_hidden_states": True},
                                     {"output_attentions": True}])
def test_the_backbone_gives_the_padded_calls_numbers_at_the_real_tokens(monkeypatch, outputs):
    backbone = BertBackbone(**TINY, **outputs)
    _perturbed(backbone)
    x = _batch()
    padded = {k: to_np(v) for k, v in backbone(x).items()}
    made = _packings(monkeypatch)
    backbone.skip_padding = True
    packed = {k: to_np(v) for k, v in backbone(x).items()}
    assert len(made) == (1 if PACKS else 0)
    real = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(packed["sequence_output"][real],
                               padded["sequence_output"][real], atol=1e-5)
    np.testing.assert_allclose(packed["pooled_output"], padded["pooled_output"], atol=1e-5)
    if "output_hidden_states" in outputs:  # (batch, layers + 1, seq, hidden)
        np.testing.assert_allclose(packed["hidden_states"].transpose(0, 2, 1, 3)[real],
                                   padded["hidden_states"].transpose(0, 2, 1, 3)[real],
                                   atol=1e-5)
    if "output_attentions" in outputs:  # (batch, layers, heads, seq, seq) at real queries
        np.testing.assert_allclose(packed["attention_probs"].transpose(0, 3, 1, 2, 4)[real],
                                   padded["attention_probs"].transpose(0, 3, 1, 2, 4)[real],
                                   atol=1e-5)
    if PACKS:
        assert not packed["sequence_output"][~real].any()
    else:
        np.testing.assert_array_equal(packed["sequence_output"], padded["sequence_output"])


def _train_step(model, x, y):
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True, ignore_class=-100))
    return float(model.train_on_batch(x, y))


def _classifier():
    return BertTextClassifier(BertBackbone(**TINY, dropout=0.2, attention_dropout=0.3),
                              num_classes=3), np.array([0, 2, 1, 1], "int32")


def _tagger():
    y = np.where(_batch()["padding_mask"] == 1, np.arange(10) % 3, -100).astype("int32")
    return BertTokenClassifier(BertBackbone(**TINY, dropout=0.2, attention_dropout=0.3),
                               num_classes=3), y


@pytest.mark.parametrize("make", [_classifier, _tagger], ids=["classifier", "tagger"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_a_training_step_with_dropout_is_the_padded_steps(monkeypatch, make, checkpointing):
    """One SGD step with dropout from the same weights and generator states,
    padded and packed: the same loss, weights and generator states after it
    (the masks are the padded batch's at the real tokens)."""
    model, y = make()
    model.backbone.gradient_checkpointing = checkpointing
    _perturbed(model)
    x = _batch()
    _train_step(model, x, y)  # builds (and draws) once
    before, rng_before = model.get_weights(), rng_snapshot(model)
    loss = _train_step(model, x, y)
    padded, rng_padded = model.get_weights(), rng_snapshot(model)
    assert sum(not np.allclose(a, b) for a, b in zip(before, padded)) > 10

    model.set_weights(before)
    rng_restore(model, rng_before)
    made = _packings(monkeypatch)
    model.backbone.skip_padding = True
    assert _train_step(model, x, y) == pytest.approx(loss, abs=1e-5)
    assert len(made) == (1 if PACKS else 0)
    for a, b in zip(padded, model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(rng_padded, rng_snapshot(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_span_logits_at_the_real_tokens_are_the_padded_calls():
    model = BertQuestionAnswerer(BertBackbone(**TINY))
    _perturbed(model)
    x = _batch()
    padded = {k: to_np(v) for k, v in model(x).items()}
    model.backbone.skip_padding = True
    packed = {k: to_np(v) for k, v in model(x).items()}
    real = x["padding_mask"].astype(bool)
    assert sorted(packed) == sorted(padded)
    for key in padded:
        np.testing.assert_allclose(packed[key][real], padded[key][real], atol=1e-5)


def test_nothing_is_packed_without_padding_or_without_the_switch(monkeypatch):
    made = _packings(monkeypatch)
    backbone = BertBackbone(**TINY, skip_padding=True)
    backbone(random_batch(batch=2, seq=6, lengths=[6, 6]))
    assert made == []
    backbone.skip_padding = False
    backbone(_batch())
    assert made == []


def test_pack_and_unpack_move_the_real_tokens():
    mask = np.array([[1, 1, 0], [1, 0, 0]], "int32")
    x = keras.ops.convert_to_tensor(np.arange(18, dtype="float32").reshape(2, 3, 3))
    packed = PackedTokens.of(mask, x)
    if not PACKS:
        assert packed is None
        return
    rows = packed.pack(x)  # rows 0, 1 and 3 of the (6, 3) flattening
    np.testing.assert_array_equal(to_np(rows), [[0, 1, 2], [3, 4, 5], [9, 10, 11]])
    back = to_np(packed.unpack(rows))
    np.testing.assert_array_equal(back, to_np(x) * mask[..., None])


def test_the_switch_is_configuration_not_architecture():
    backbone = BertBackbone(**TINY, skip_padding=True)
    config = backbone.get_config()
    assert config["skip_padding"] is True
    assert BertBackbone.from_config(config).skip_padding is True
    assert "skip_padding" not in backbone.architecture_config()


@pytest.mark.skipif(not PACKS, reason="packs on PyTorch only (tested above)")
def test_the_fine_tuning_job_skips_the_padding(monkeypatch, tmp_path, tiny_model):
    from pathlib import Path

    from bertdesk.training.finetune import FinetuneConfig, run_finetune

    conll = Path(__file__).resolve().parents[1] / "assets" / "ner_en.conll"
    train = tmp_path / "train.conll"
    train.write_text("\n\n".join(conll.read_text(encoding="utf-8").split("\n\n")[:40]) + "\n",
                     encoding="utf-8")
    made = _packings(monkeypatch)
    result = run_finetune(FinetuneConfig(task="ner", format="conll", train=str(train),
                                         output=str(tmp_path / "run"), model=tiny_model,
                                         epochs=1, batch_size=16, max_length=32,
                                         pad_to_multiple=32))
    assert "f1" in result["metrics"]
    assert len(made) >= 3  # its training batches and its evaluation
