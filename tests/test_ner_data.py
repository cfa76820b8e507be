"""NER readers (CoNLL IOB1/IOB2, character BMES/BIO) and strict entity
metrics against seqeval."""

import random

import pytest

from bertdesk.data.ner import (bmes_to_bio, entities, entity_metrics, iob1_to_iob2, is_bio,
                               read_char_tags, read_conll, to_bio)
from bertdesk.data.tables import DataError

pytestmark = pytest.mark.backend_neutral


def test_iob1_to_iob2():
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-MISC"]
    assert iob1_to_iob2(iob2) == iob2


def test_bmes_to_bio():
    assert bmes_to_bio(["B-NS", "M-NS", "E-NS", "O", "S-NR", "B-NT", "E-NT"]) == \
        ["B-NS", "I-NS", "I-NS", "O", "B-NR", "B-NT", "I-NT"]
    # an entity ends at its E-/S-: what follows starts another
    assert bmes_to_bio(["S-X", "E-X"]) == ["B-X", "B-X"]
    assert bmes_to_bio(["B-X", "E-X", "E-X", "M-Y", "E-X"]) == ["B-X", "I-X", "B-X", "B-Y",
                                                                 "B-X"]


def test_io_and_bioes_tags_to_bio():
    """A model's tags in IO (bare types: a run of one type is one entity, as
    Hugging Face's pipelines group them) or BIOES read as BIO."""
    assert to_bio(["PER", "PER", "O", "LOC", "PER", "PER"]) == [
        "B-PER", "I-PER", "O", "B-LOC", "B-PER", "I-PER"]
    assert to_bio(["B-PER", "E-PER", "PER", "S-LOC", "I-LOC", "B-ORG", "I-ORG", "E-ORG"]) == [
        "B-PER", "I-PER", "B-PER", "B-LOC", "B-LOC", "B-ORG", "I-ORG", "I-ORG"]
    assert is_bio(["O", "B-X", "I-X"]) and not is_bio(["O", "X"]) \
        and not is_bio(["O", "B-X", "E-X"])


def test_bmes_entities_match_seqeval_on_random_tags():
    """Entities of BMES tags converted to BIO, against seqeval's default
    reading of the same BIOES tags (malformed sequences included)."""
    from seqeval.metrics.sequence_labeling import get_entities

    rng = random.Random(0)
    choices = ["O", "B-X", "M-X", "E-X", "S-X", "B-Y", "M-Y", "E-Y", "S-Y"]
    for _ in range(2000):
        tags = [rng.choice(choices) for _ in range(rng.randint(1, 12))]
        bio = bmes_to_bio(tags)
        ours = {(t, s, e) for t, s, e in get_entities(bio)}
        theirs = {(t, s, e) for t, s, e in get_entities([x.replace("M-", "I-") for x in tags])}
        assert ours == theirs, tags


def test_read_conll_iob1(tmp_path):
    p = tmp_path / "eng.train"
    p.write_text("EU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\n\n"
                 "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\n\n-DOCSTART- -X- -X- O\n\n")
    data = read_conll(p)
    assert data.words == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert data.tags == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert data.lines == [1, 5]


def test_read_char_tags(tmp_path):
    p = tmp_path / "msra.ner"
    p.write_text("中 B-NT\n国 E-NT\n很 O\n大 O\n\n北 B-NS\n京 E-NS\n")
    data = read_char_tags(p)
    assert data.words == [list("中国很大"), list("北京")]
    assert data.tags == [["B-NT", "I-NT", "O", "O"], ["B-NS", "I-NS"]]


def test_bad_ner_files(tmp_path):
    p = tmp_path / "bad.conll"
    p.write_text("EU NNP I-NP I-ORG\nrejects VBZ O\n")
    # the line quoted is the one that broke the rule (it read as if the first)
    with pytest.raises(DataError, match=r"bad.conll: line 2: 3 fields, expected 4 as on the "
                                        r"first word line; the line reads 'rejects VBZ O'"):
        read_conll(p)
    p.write_text("EU NNP I-NP ORG\n")
    with pytest.raises(DataError, match=r"bad.conll: line 1: tag 'ORG' is not O or B-TYPE/I-TYPE"):
        read_conll(p)
    p.write_text("中 B-NT 1\n")
    with pytest.raises(DataError, match=r"line 1: expected 'CHARACTER TAG'"):
        read_char_tags(p)
    p.write_text("\n\n")
    with pytest.raises(DataError, match="no sentences"):
        read_conll(p)
    p.write_bytes(b"EU NNP I-NP I-ORG\n\nParis NNP I-NP I-LOC\nCaf\xe9 NNP I-NP O\n")
    with pytest.raises(DataError, match=r"bad.conll: not UTF-8 text \(line 4: undecodable byte "
                                        r"0xe9 at byte 43 of the file"):
        read_conll(p)


def test_strict_entities():
    assert entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == \
        [("PER", 0, 2), ("LOC", 4, 5)]


def test_entity_metrics_match_seqeval():
    import seqeval.metrics as seqeval
    from seqeval.scheme import IOB2

    rng = random.Random(0)
    kinds = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold, pred = [], []
    for _ in range(200):
        g = iob1_to_iob2([rng.choice(kinds) for _ in range(rng.randint(1, 12))])
        p = [t if rng.random() < 0.8 else rng.choice(kinds) for t in g]
        gold.append(g)
        pred.append(p)
    m = entity_metrics(gold, pred)
    kw = dict(mode="strict", scheme=IOB2)
    assert m["precision"] == pytest.approx(seqeval.precision_score(gold, pred, **kw))
    assert m["recall"] == pytest.approx(seqeval.recall_score(gold, pred, **kw))
    assert m["f1"] == pytest.approx(seqeval.f1_score(gold, pred, **kw))


def test_predicted_tags_are_scored_as_conlleval_reads_them(monkeypatch):
    """A B-/I- model's predictions are read as the gold tags are (an I-X
    after O or another type opens an entity; conlleval, seqeval's default
    mode): they were read strictly, so a checkpoint trained on IOB1 tags
    scored near 0 on its own data, and `predict --format conll` listed no
    entity where `--format text` listed one."""
    import seqeval.metrics as seqeval

    from bertdesk.data import ner
    from bertdesk.data.ner import TaggedSentences
    from bertdesk.training.tasks import NerTask

    rng = random.Random(1)
    kinds = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold_iob1, pred = [], []
    for _ in range(200):
        g = [rng.choice(["O", "I-PER", "I-LOC", "B-PER"]) for _ in range(rng.randint(1, 12))]
        gold_iob1.append(g)
        pred.append([t if rng.random() < 0.8 else rng.choice(kinds) for t in g])
    data = TaggedSentences([["w"] * len(g) for g in gold_iob1],
                           [iob1_to_iob2(g) for g in gold_iob1], "x.conll",
                           list(range(1, 201)))
    monkeypatch.setattr(ner, "tag_words", lambda *args: [(p, None) for p in pred])
    head = {"labels": kinds}
    task = NerTask()
    m = task.metrics(task.scores(None, None, data, head, 128), data, head)
    assert m["f1"] == pytest.approx(seqeval.f1_score(gold_iob1, pred))
    assert m["precision"] == pytest.approx(seqeval.precision_score(gold_iob1, pred))
    assert m["recall"] == pytest.approx(seqeval.recall_score(gold_iob1, pred))
    monkeypatch.setattr(ner, "tag_words", lambda *args: [(g, None) for g in gold_iob1])
    perfect = task.metrics(task.scores(None, None, data, head, 128), data, head)
    assert perfect["f1"] == 1.0  # an IOB1 model predicting its own data's tags exactly
    rows = task.rows(task.scores(None, None, data, head, 128), data, head)
    first = next(i for i, g in enumerate(gold_iob1) if g[0] == "I-PER")
    assert rows[first]["entities"].startswith("PER:w") and rows[first]["correct"]


def test_a_model_tagging_in_another_scheme_is_scored_on_bio_data():
    """The data's tags (IOB2) were checked against the labels of a BMES or IO
    model, which has no I-X: `evaluate` refused every such checkpoint."""
    from bertdesk.data.ner import TaggedSentences
    from bertdesk.training.tasks import NerTask

    data = TaggedSentences([["Li", "Na", "in", "Oslo"]], [["B-PER", "I-PER", "O", "B-LOC"]],
                           "x.conll", [1])
    for labels in (["O", "B-PER", "M-PER", "E-PER", "S-PER", "S-LOC", "B-LOC", "E-LOC"],
                   ["O", "PER", "LOC"]):
        NerTask().targets(data, {"labels": labels})
        with pytest.raises(DataError, match=r"x.conll: line 4: tag 'B-LOC' is not one the "
                                            r"model knows \(O, "):
            NerTask().targets(data, {"labels": [label for label in labels if "LOC" not in label]})
    # an IOB1 checkpoint without B-PER (CoNLL-2003's IOB1 training data has none)
    NerTask().targets(data, {"labels": ["O", "I-PER", "I-LOC", "B-LOC"]})
    with pytest.raises(DataError, match="line 1: tag 'B-PER' is not one the model knows"):
        NerTask().targets(data, {"labels": ["O", "B-LOC", "I-LOC"]})  # no PER at all


def test_the_held_out_part_never_holds_a_type_training_lacks():
    """The labels come from the training part: a type in one sentence went
    to the held-out part for some seeds, and the run failed for those."""
    from bertdesk.data.ner import TaggedSentences
    from bertdesk.training.tasks import NerTask

    words = [["Ann", "runs"]] * 19 + [["Zed", "Corp"]]
    tags = [["B-PER", "O"]] * 19 + [["B-ORG", "I-ORG"]]
    data = TaggedSentences(words, tags, "rare.conll", list(range(1, 60, 3)))
    held = 0
    for seed in range(20):
        train, validation = NerTask().split(data, 0.2, seed)
        assert len(train.words) + len(validation.words) == 20 and len(validation.words) >= 3
        assert ["B-ORG", "I-ORG"] in train.tags
        assert sorted(train.lines + validation.lines) == data.lines
        held += ["B-PER", "O"] in validation.tags
    assert held == 20
    small = TaggedSentences(words[15:], tags[15:], "small.conll", data.lines[15:])  # 4 + 1
    for seed in range(20):  # one sentence held out: never the only ORG one
        train, validation = NerTask().split(small, 0.1, seed)
        assert len(validation.words) == 1 and ["B-ORG", "I-ORG"] in train.tags
