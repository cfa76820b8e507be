"""Token classification model, label alignment and mapping back to words,
on the current backend."""

import keras
import numpy as np
import pytest
from conftest import TINY, random_batch
from harness import check_keras_roundtrip, to_np

import bertdesk
from bertdesk.data.batching import PaddedBatches, fit_input
from bertdesk.data.ner import align_tags, entity_metrics, word_predictions
from bertdesk.tasks.bert_token_classifier import IGNORE_INDEX, BertTokenClassifier

SENTENCES = [
    (["Alice", "visited", "Paris", "yesterday"], ["B-PER", "O", "B-LOC", "O"]),
    (["Bob", "Smithson", "lives", "in", "New", "York"], ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]),
    (["unbelievably", "Tokyo"], ["O", "B-LOC"]),
]
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def tokenizer(minilm_folder):
    return bertdesk.load_tokenizer(minilm_folder)


def test_first_piece_gets_the_label(tokenizer):
    enc = tokenizer.encode_words([w for w, _ in SENTENCES], max_length=32)
    targets = align_tags(enc, [t for _, t in SENTENCES], {l: i for i, l in enumerate(LABELS)})
    ids, _, word_ids = enc[2]
    pieces = [tokenizer.vocabulary[i] for i in ids]
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert len(pieces) > 4  # "unbelievably" splits into several pieces
    first = [p for p, w in enumerate(word_ids) if w >= 0 and (p == 0 or word_ids[p - 1] != w)]
    assert [targets[2][p] for p in first] == [0, 3]
    assert (np.delete(targets[2], first) == IGNORE_INDEX).all()


def test_word_predictions_back_to_words(tokenizer):
    enc = tokenizer.encode_words([SENTENCES[1][0]], max_length=5)  # truncates
    ids, _, word_ids = enc[0]
    logits = np.zeros((len(ids), len(LABELS)))
    logits[:, 1] = 1.0
    tags = word_predictions(logits, word_ids, 6, LABELS)
    kept = sorted({int(w) for w in word_ids if w >= 0})
    assert kept == list(range(len(kept))) and 0 < len(kept) < 6
    assert tags == ["B-PER"] * len(kept) + ["O"] * (6 - len(kept))  # cut-off words are "O"


def test_model_outputs_roundtrip_and_fit(tmp_path, tokenizer):
    # no dropout: the fit below checks that labels reach the right pieces, and
    # a 16-wide model memorising 3 sentences should not hang on the mask draws
    backbone = bertdesk.BertBackbone(**{**TINY, "vocabulary_size": tokenizer.vocabulary_size},
                                     dropout=0.0, attention_dropout=0.0)
    model = BertTokenClassifier(backbone, num_classes=len(LABELS))
    x = random_batch(seq=9)
    assert tuple(model(x)["logits"].shape) == (3, 9, len(LABELS))
    check_keras_roundtrip(model, x, tmp_path)

    words, tags = [w for w, _ in SENTENCES] * 8, [t for _, t in SENTENCES] * 8
    enc = tokenizer.encode_words(words, max_length=16)
    targets = align_tags(enc, tags, {l: i for i, l in enumerate(LABELS)})
    ds = PaddedBatches(enc, targets, batch_size=8, shuffle=True, target_pad_value=IGNORE_INDEX)
    x, y = ds[0]
    assert y.shape == x["token_ids"].shape and (y[x["padding_mask"] == 0] == IGNORE_INDEX).all()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE_INDEX)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss={"logits": loss})
    hist = model.fit(fit_input(ds), epochs=25, verbose=0, shuffle=False)
    assert hist.history["loss"][-1] < hist.history["loss"][0] * 0.5
    pred_ds = PaddedBatches(enc[:3], None, batch_size=3)
    logits = to_np(model(pred_ds[0][0])["logits"])
    pred = [word_predictions(logits[i], enc[i][2], len(words[i]), LABELS) for i in range(3)]
    assert entity_metrics(tags[:3], pred)["f1"] > 0.5


def test_ignored_positions_do_not_change_the_loss():
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE_INDEX)
    logits = np.random.default_rng(0).normal(size=(2, 4, 3)).astype("float32")
    y = np.array([[0, 1, IGNORE_INDEX, IGNORE_INDEX], [2, IGNORE_INDEX, 1, IGNORE_INDEX]])
    logits2 = logits.copy()
    logits2[y == IGNORE_INDEX] = 50.0
    a = float(keras.ops.convert_to_numpy(loss(y, logits)))
    b = float(keras.ops.convert_to_numpy(loss(y, logits2)))
    assert a == pytest.approx(b, rel=1e-5)
