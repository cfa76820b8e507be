"""`bertdesk.Predictor` on raw text, against the model called directly:
classification, NER (words, offsets, long texts in windows), extractive QA;
`bertdesk predict --format text`; prediction on tables with empty labels."""

import csv
import json
import re

import keras
import numpy as np
import pytest

import bertdesk
from bertdesk.cli import main as cli_main
from bertdesk.data.ner import word_windows
from bertdesk.data.tables import DataError, load_classification
from bertdesk.predictor import Predictor
from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer
from bertdesk.tasks.bert_text_classifier import BertTextClassifier
from bertdesk.tasks.bert_token_classifier import BertTokenClassifier
from bertdesk.tasks.saving import save_task_model

NER_LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
TEXTS = ["A gripping plot, and fine acting.", "Dull.",
         "Nothing happens for two hours and then it ends without a reason to care."]


@pytest.fixture(scope="module")
def tokenizer():
    return bertdesk.BertTokenizer.from_pretrained(bertdesk.bundled_checkpoint())


def backbone():
    keras.utils.set_random_seed(7)
    return bertdesk.BertBackbone(vocabulary_size=30522, num_layers=2, hidden_dim=16,
                                 num_heads=2, intermediate_dim=32, max_sequence_length=128)


def saved(tmp_path, tokenizer, model, task, head, spread=30, **training_args):
    # a random head gives near-equal classes; wider weights tell them apart
    model.classifier.kernel.assign(keras.ops.convert_to_numpy(model.classifier.kernel) * spread)
    folder = tmp_path / f"{task}-{head.get('problem_type', '')}"
    save_task_model(model, folder, tokenizer, task, head,
                    {"max_length": 32, "text_pair_column": None, **training_args})
    return Predictor.load(folder, batch_size=2)  # several batches of different lengths


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def direct_logits(model, tokenizer, texts, pairs=None, max_length=32, **kw):
    """The model on one text at a time, unpadded: no batching, bucketing or
    ordering in the way."""
    out = []
    for i, text in enumerate(texts):
        batch = tokenizer([text], None if pairs is None else [pairs[i]], max_length=max_length,
                          padding="longest", **kw)
        inputs = {k: batch[k] for k in ("token_ids", "segment_ids", "padding_mask")}
        logits = model.predict_on_batch(inputs)
        out.append((np.asarray(logits["logits"] if isinstance(logits, dict) else logits)[0],
                    batch))
    return out


# === Classification ===
def test_classify_matches_the_model_on_each_text(tmp_path, tokenizer):
    labels = ["neg", "neu", "pos"]
    model = BertTextClassifier(backbone(), num_classes=3)
    p = saved(tmp_path, tokenizer, model, "classify",
              {"problem_type": "single_label", "num_classes": 3, "labels": labels})
    got = p(TEXTS)
    assert len(got) == 3
    for answer, (logits, _) in zip(got, direct_logits(p.model.model, tokenizer, TEXTS)):
        probs = softmax(logits)
        assert [answer["scores"][k] for k in labels] == pytest.approx(probs, abs=1e-5)
        assert answer["label"] == labels[int(probs.argmax())]
        assert answer["score"] == pytest.approx(probs.max(), abs=1e-5)
    one = p(TEXTS[1])  # one string in, one answer out
    assert one["label"] == got[1]["label"] and one["score"] == pytest.approx(got[1]["score"])
    assert Predictor(str(p.model.folder))(TEXTS[1])["label"] == one["label"]  # a folder too
    with pytest.raises(ValueError, match="trained on single texts: give no text_pairs"):
        p("a", "b")
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        p(["fine", "  "])
    for bad in (None, b"bytes", 3):
        with pytest.raises(TypeError, match="texts must be a string or a list of strings"):
            p(bad)
    with pytest.raises(TypeError, match="takes a model folder or a FineTunedModel"):
        Predictor(p.model.model)


def test_classify_multi_label_regression_and_pairs(tmp_path, tokenizer):
    model = BertTextClassifier(backbone(), num_classes=3, problem_type="multi_label")
    p = saved(tmp_path, tokenizer, model, "classify",
              {"problem_type": "multi_label", "num_classes": 3, "labels": ["a", "b", "c"]})
    for answer, (logits, _) in zip(p.classify(TEXTS), direct_logits(p.model.model, tokenizer,
                                                                     TEXTS)):
        sig = 1 / (1 + np.exp(-logits))
        assert [answer["scores"][k] for k in "abc"] == pytest.approx(sig, abs=1e-5)
        assert answer["labels"] == [k for k, v in zip("abc", sig) if v >= 0.5]

    model = BertTextClassifier(backbone(), num_classes=1, problem_type="regression")
    p = saved(tmp_path, tokenizer, model, "classify",
              {"problem_type": "regression", "num_classes": 1, "labels": None},
              text_pair_column="b")
    with pytest.raises(ValueError, match="trained on text pairs"):
        p(TEXTS)
    pairs = ["x", "y", "z"]
    for answer, (logits, _) in zip(p(TEXTS, pairs), direct_logits(p.model.model, tokenizer,
                                                                   TEXTS, pairs)):
        assert answer["value"] == pytest.approx(float(logits[0]), abs=1e-5)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        p(["a", 3], pairs[:2])
    with pytest.raises(ValueError, match="text_pairs has 2 items but texts has 3"):
        p(TEXTS, pairs[:2])


# === Token classification ===
def ner_predictor(tmp_path, tokenizer, bias_tag=None, spread=30, labels=NER_LABELS,
                  **training_args):
    model = BertTokenClassifier(backbone(), num_classes=len(labels))
    if bias_tag is not None:  # every word gets this tag
        bias = np.full(len(labels), -50.0, np.float32)
        bias[labels.index(bias_tag)] = 50.0
        model.classifier.bias.assign(bias)
    return saved(tmp_path, tokenizer, model, "ner",
                 {"num_classes": len(labels), "labels": labels}, spread=spread,
                 **training_args)


def test_tags_sit_on_each_words_first_piece(tmp_path, tokenizer):
    p = ner_predictor(tmp_path, tokenizer)
    text = "Zoë Saldaña flew to São Paulo, unannounced."
    words = p.tag(text)
    assert [w["word"] for w in words] == ["Zoë", "Saldaña", "flew", "to", "São", "Paulo", ",",
                                          "unannounced", "."]
    assert all(text[w["start"]:w["end"]] == w["word"] for w in words)
    (logits, batch), = direct_logits(p.model.model, tokenizer, [text], return_word_ids=True)
    word_ids = batch["word_ids"][0]
    first = [int(np.flatnonzero(word_ids == i)[0]) for i in range(len(words))]
    assert [w["tag"] for w in words] == [NER_LABELS[int(logits[j].argmax())] for j in first]
    assert [w["score"] for w in words] == pytest.approx(
        [float(softmax(logits[j]).max()) for j in first], abs=1e-5)


def test_a_long_text_is_tagged_in_windows_between_words(tmp_path, tokenizer):
    # probabilities far from 0 and 1, where a word's context shows in the 5th digit
    p = ner_predictor(tmp_path, tokenizer, spread=3, max_length=12)
    # one piece a word, ten a window: windows share about five words
    text = " ".join(["the cat sat on a mat and then it ran"] * 7 + ["extraordinarily"] * 10)
    words = p.tag(text)
    assert len(words) == 80 and all(w["score"] is not None for w in words)
    # each word is tagged as in the window where it sits farthest from an edge,
    # that window's words tagged alone
    enc = tokenizer.encode_words([[w["word"] for w in words]], max_length=None)
    windows, origins = word_windows(enc, 12)
    assert len(windows) > 10
    best = {}
    for (ids, _, word_ids), (_, first) in zip(windows, origins):
        ones = sorted(set(word_ids[1:-1]))
        alone = p.tag(" ".join(words[first + w]["word"] for w in ones))
        for w, tagged in zip(ones, alone):
            pos = int(np.flatnonzero(word_ids == w)[0])
            edge = min(pos, len(ids) - 1 - pos)
            if edge > best.get(first + w, (-1,))[0]:
                best[first + w] = (edge, tagged["tag"], tagged["score"])
    assert [w["tag"] for w in words] == [best[i][1] for i in range(80)]
    assert [w["score"] for w in words] == pytest.approx([best[i][2] for i in range(80)],
                                                        abs=1e-5)


@pytest.mark.backend_neutral
def test_word_windows_fit_overlap_and_keep_every_piece(tokenizer):
    sentences = [["a"] * 3, ["extraordinarily", "uncharacteristically", "x"] * 9,
                 ["antidisestablishmentarianism"], [], ["tiny"] * 40]
    whole = tokenizer.encode_words(sentences, max_length=None)
    windows, origins = word_windows(whole, 8)
    assert all(len(ids) <= 8 and ids[0] == tokenizer.cls_token_id and
               ids[-1] == tokenizer.sep_token_id for ids, _, _ in windows)
    for sentence, (ids, _, word_ids) in enumerate(whole):
        mine = [(w, first) for w, (s, first) in zip(windows, origins) if s == sentence]
        assert mine, "every sentence has a window"
        if sentence == 2:  # one word longer than a window: its first pieces
            assert len(mine) == 1 and list(mine[0][0][0][1:-1]) == list(ids[1:7])
            continue
        pieces, words = ids[1:-1], word_ids[1:-1]
        for (w_ids, _, w_words), first in mine:  # each window: whole words, as in the sentence
            inside = np.isin(words, np.unique(w_words[1:-1]) + first)
            assert list(w_ids[1:-1]) == list(pieces[inside])
            assert list(w_words[1:-1] + first) == list(words[inside])
        starts = [first for _, first in mine]
        assert starts == sorted(set(starts))  # every window starts further on
        seen = set().union(*({int(x) + first for x in w[2][1:-1]} for w, first in mine))
        assert seen == set(int(x) for x in words)  # every word is in a window
        for (a, first_a), (b, first_b) in zip(mine, mine[1:]):
            # consecutive windows share about half the words of the first
            # (none when it holds one word)
            shared = set(a[2][1:-1] + first_a) & set(b[2][1:-1] + first_b)
            assert len(shared) >= len(set(a[2][1:-1])) // 2 - 1 and len(shared) < len(
                set(a[2][1:-1]))
    assert len([o for o in origins if o[0] == 4]) > 10  # 40 words, 6 a window
    with pytest.raises(ValueError, match="no room"):
        word_windows(whole, 2)


def test_entities_and_their_offsets(tmp_path, tokenizer, monkeypatch):
    text = "Ana  moved to New York."
    per = ner_predictor(tmp_path, tokenizer, bias_tag="B-PER")
    found = per.entities(text)
    assert [(e["type"], e["text"]) for e in found] == [
        ("PER", w) for w in ("Ana", "moved", "to", "New", "York", ".")]
    assert all(text[e["start"]:e["end"]] == e["text"] and e["score"] > 0.99 for e in found)
    inside = ner_predictor(tmp_path / "i", tokenizer, bias_tag="I-LOC")
    assert inside.entities([text, text], strict=True) == [[], []]  # I- starts nothing
    assert [(e["type"], e["text"]) for e in inside.entities(text)] == [("LOC", text)]
    accents = "Zoe\u0301 and Jose\u0301 \u2764\ufe0f"  # combining accents the tokenizer drops
    assert [e["text"] for e in per.entities(accents)] == [
        "Zoe\u0301", "and", "Jose\u0301", "\u2764\ufe0f"]
    with pytest.raises(ValueError, match=r"a ner model; classify\(\) needs a classify"):
        per.classify("x")

    tags = ["B-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    real_tag = Predictor.tag
    monkeypatch.setattr(Predictor, "tag", lambda self, texts: [
        [dict(w, tag=t) for w, t in zip(words, tags)] for words in real_tag(self, texts)])
    found = per.entities([text])[0]
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in found] == [
        ("PER", "Ana", 0, 3), ("LOC", "New York", 14, 22)]


def test_models_tagging_in_bioes_or_io_give_their_entities(tmp_path, tokenizer, monkeypatch):
    """A checkpoint trained elsewhere may tag in IO (bare types) or BIOES:
    its entities are read by that scheme (they came back empty: only B-/I-
    were read), in `entities`, `predict_lines` and evaluation."""
    from bertdesk.predictor import predict_lines
    from bertdesk.training.tasks import NerTask
    from bertdesk.data.ner import TaggedSentences

    text = "Ana Lima moved to Rome."
    io = ner_predictor(tmp_path / "io", tokenizer, bias_tag="PER", labels=["O", "PER", "LOC"])
    assert [(e["type"], e["text"]) for e in io.entities(text)] == [("PER", text)]
    assert io.entities(text, strict=True) == io.entities(text)
    (tags,) = NerTask().scores(io.model.model, tokenizer, TaggedSentences([["Ana", "Lima"]], None),
                               io.model.head, 32)
    assert tags == ["B-PER", "I-PER"]  # compared with the data's BIO tags
    lines = tmp_path / "lines.txt"
    lines.write_text(text + "\n", encoding="utf-8")
    assert predict_lines(io, lines)[0]["entities"] == f"PER:{text}"
    bioes_labels = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    bioes = ner_predictor(tmp_path / "bioes", tokenizer, bias_tag="S-PER", labels=bioes_labels)
    assert [e["text"] for e in bioes.entities(text)] == ["Ana", "Lima", "moved", "to", "Rome", "."]
    real_tag = Predictor.tag
    for predictor, tags in ((bioes, ["B-PER", "E-PER", "O", "O", "S-LOC", "O"]),
                            (io, ["PER", "PER", "O", "O", "LOC", "O"])):
        monkeypatch.setattr(Predictor, "tag", lambda self, texts, tags=tags: [
            [dict(w, tag=t) for w, t in zip(words, tags)] for words in real_tag(self, texts)])
        for strict in (False, True):
            assert [(e["type"], e["text"]) for e in predictor.entities(text, strict=strict)] == [
                ("PER", "Ana Lima"), ("LOC", "Rome")]


def test_a_word_without_pieces_inside_an_entity_continues_it(tmp_path, tokenizer):
    """A character the tokenizer drops (a variation selector on a line of
    its own) has no piece to tag: between two words of one entity it
    continues the entity (it was "O", which cut it in two)."""
    from bertdesk.data.ner import tag_words

    words = [["北", "\ufe0f", "京"]]
    inside = ner_predictor(tmp_path / "i", tokenizer, bias_tag="I-LOC")
    ((tags, probs),) = tag_words(inside.model.model, tokenizer, words, NER_LABELS, 32)
    assert tags == ["I-LOC"] * 3 and probs[1] is None
    assert [e["text"] for e in inside.entities(words, is_split_into_words=True)[0]] == [
        "北 \ufe0f 京"]
    begins = ner_predictor(tmp_path / "b", tokenizer, bias_tag="B-LOC")  # two entities: no fill
    ((tags, _),) = tag_words(begins.model.model, tokenizer, words, NER_LABELS, 32)
    assert tags == ["B-LOC", "O", "B-LOC"]


def test_words_given_are_tagged_as_given(tmp_path, tokenizer):
    """`is_split_into_words=True`: CoNLL-style words stay whole (`U.S.`),
    tagged as `evaluate` tags a CoNLL file; offsets into the words joined
    by spaces, as transformers' pipeline gives them."""
    from bertdesk.data.ner import tag_words

    p = ner_predictor(tmp_path, tokenizer)
    sentences = [["U.S.", "officials", "met", "Wal-Mart", "staff", "in", "São", "Paulo", "."],
                 ["Dull", "."]]
    got = p.tag(sentences, is_split_into_words=True)
    expected = tag_words(p.model.model, tokenizer, sentences, NER_LABELS, 32)
    for words, tagged, (tags, probs) in zip(sentences, got, expected):
        joined = " ".join(words)
        assert [w["word"] for w in tagged] == words
        assert [joined[w["start"]:w["end"]] for w in tagged] == words
        assert [w["tag"] for w in tagged] == tags
        assert [w["score"] for w in tagged] == pytest.approx(probs, abs=1e-5)
    one = p.tag(sentences[0], is_split_into_words=True)  # one sentence: its words
    assert [w["tag"] for w in one] == [w["tag"] for w in got[0]]
    assert len(p.tag(" ".join(sentences[0]))) == len(sentences[0]) + 5  # U . S . / Wal - Mart

    per = ner_predictor(tmp_path / "per", tokenizer, bias_tag="B-PER")
    found = per.entities(sentences, is_split_into_words=True)
    assert [e["text"] for e in found[0]] == sentences[0]
    assert found[1][0] == dict(found[1][0], type="PER", text="Dull", start=0, end=4)
    assert per.entities(sentences[1], is_split_into_words=True) == [
        dict(e, score=pytest.approx(e["score"], abs=1e-6)) for e in found[1]]
    assert p.tag([], is_split_into_words=True) == []
    for bad, message in (("U.S. officials", "texts must be a list of words"),
                         ([["a", 1]], r"texts\[0\]\[1\] is int"),
                         ([["a"], "b"], "not a mix of words and lists")):
        with pytest.raises(TypeError, match=message):
            p.tag(bad, is_split_into_words=True)


def test_character_models_tag_each_character(tmp_path, tokenizer):
    p = ner_predictor(tmp_path, tokenizer, bias_tag="B-LOC", format="bmes")
    text = "我 在北京 2008"
    words = p.tag(text)
    assert [w["word"] for w in words] == list("我在北京2008")
    assert [w["start"] for w in words] == [0, 2, 3, 4, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="a ner model; answer\\(\\) needs a qa model"):
        p.answer("x", "y")


# === Extractive QA ===
def approx_answer(answer):
    """The same span; its probability to float noise (batches of other
    lengths pad differently)."""
    return dict(answer, score=pytest.approx(answer["score"], abs=1e-6))


def qa_predictor(tmp_path, tokenizer, null_threshold=None):
    model = BertQuestionAnswerer(backbone())
    head = {"problem_type": "extractive_qa", "num_classes": 2, "labels": None,
            "version": "1.1" if null_threshold is None else "2.0",
            "null_threshold": null_threshold, "doc_stride": 8, "max_answer_length": 5}
    return saved(tmp_path / str(null_threshold), tokenizer, model, "qa", head)


def test_bad_batch_size_and_top_k_are_refused(tmp_path, tokenizer):
    p = qa_predictor(tmp_path, tokenizer)
    for value in (0, -1, 2.0, "3", None, True):
        with pytest.raises(ValueError, match=f"top_k must be a whole number >= 1, got "
                                             f"{re.escape(repr(value))}"):
            p.answer(["Where?"], ["In the hills."], top_k=value)
        if value is not None:
            with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
                Predictor(p.model, batch_size=value)
    # no span at all (a context without tokens), no null threshold: top_k=2 answers
    # as top_k=1 does, with the empty answer first
    one = p.answer("Where?", "\u0301\u0301")
    two = p.answer("Where?", "\u0301\u0301", top_k=2)
    assert one["start"] is None and two[0] == one


def test_answers_are_spans_of_the_context(tmp_path, tokenizer):
    from bertdesk.data.squad import QAData, QAExample
    from bertdesk.training.tasks import get_task

    p = qa_predictor(tmp_path, tokenizer)
    context = ("The river rises in the northern hills, runs south past three old mills and "
               "the town of Evenmoor, and meets the sea at a wide, shallow estuary.")
    questions = ["Where does the river rise?", "What town does it pass?"]
    got = p.answer(questions, [context, context])  # 32 tokens a window: several windows
    for a in got:
        assert a["answer"] and context[a["start"]:a["end"]] == a["answer"]
        assert 0 < a["score"] <= 1
    # the same answers as `bertdesk evaluate` and `predict` on a SQuAD file
    data = QAData([QAExample(str(i), q, context, []) for i, q in enumerate(questions)], "q")
    task = get_task("qa")
    expected = task.scores(p.model.model, tokenizer, data, p.model.head, 32)
    assert [a["answer"] for a in got] == [expected["0"], expected["1"]]
    assert p(questions[0], context) == approx_answer(got[0])

    # a context in one window: the best span by brute force over the model's logits
    short = "Evenmoor lies on the river Tam."
    (logits, batch), = direct_logits(p.model.model, tokenizer, [questions[0]], [short],
                                     return_offsets=True)
    in_context = (batch["segment_ids"][0] == 1) & (batch["offsets"][0, :, 1] > 0)
    spans = [(logits[s, 0] + logits[e, 1], s, e) for s in np.flatnonzero(in_context)
             for e in np.flatnonzero(in_context) if s <= e < s + 5]
    _, s, e = max(spans)
    allowed = in_context.copy()
    allowed[0] = True
    p_start, p_end = (softmax(np.where(allowed, logits[:, i], -np.inf)) for i in (0, 1))
    start, end = batch["offsets"][0, s, 0], batch["offsets"][0, e, 1]
    assert p.answer(questions[0], short) == {"answer": short[start:end], "start": start,
                                             "end": end, "score": pytest.approx(
                                                 p_start[s] * p_end[e], abs=1e-6)}

    assert p.answer(questions[0], [context, short]) == [
        approx_answer(got[0]), approx_answer(p.answer(questions[0], short))]
    top = p.answer(questions[0], context, top_k=3)
    assert len(top) == 3 and top[0] == approx_answer(got[0])
    assert len({(a["start"], a["end"]) for a in top}) == 3
    assert all(context[a["start"]:a["end"]] == a["answer"] for a in top)

    never = qa_predictor(tmp_path, tokenizer, null_threshold=-1e9)  # SQuAD 2.0, always "no"
    a = never.answer(questions[0], context)
    assert (a["answer"], a["start"], a["end"]) == ("", None, None) and 0 < a["score"] <= 1
    with pytest.raises(ValueError, match="example 1: empty context"):
        p.answer(questions, [context, " "])


# === Files ===
def test_predict_lines_of_text_from_the_command_line(tmp_path, tokenizer, capsys):
    lines = tmp_path / "lines.txt"
    lines.write_text("\ufeffAna moved to Paris.\r\n\n  \nBob\u2028stayed.\n", encoding="utf-8")
    ner = ner_predictor(tmp_path, tokenizer, bias_tag="B-PER")
    out = tmp_path / "tagged.jsonl"
    assert cli_main(["predict", "--model", str(ner.model.folder), "--data", str(lines),
                     "--format", "text", "--output", str(out)]) == 0
    # (JSON lines end at "\n"; splitlines() would also cut at the U+2028 inside)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n")[:-1]]
    assert [(r["line"], r["text"]) for r in rows] == [(1, "Ana moved to Paris."),
                                                      (4, "Bob\u2028stayed.")]
    assert rows[0]["words"] == "Ana moved to Paris ." and rows[0]["prediction"].split() == [
        "B-PER"] * 5
    assert rows[1]["entities"] == "PER:Bob; PER:stayed; PER:."

    model = BertTextClassifier(backbone(), num_classes=2)
    cls = saved(tmp_path, tokenizer, model, "classify",
                {"problem_type": "single_label", "num_classes": 2, "labels": ["neg", "pos"]})
    out = tmp_path / "labels.csv"
    assert cli_main(["predict", "--model", str(cls.model.folder), "--data", str(lines),
                     "--format", "text", "--output", str(out)]) == 0
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = cls(["Ana moved to Paris.", "Bob\u2028stayed."])
    assert [r["prediction"] for r in rows] == [e["label"] for e in expected]
    assert [float(r["p(pos)"]) for r in rows] == pytest.approx(
        [e["scores"]["pos"] for e in expected], abs=1e-6)

    blank, empty = tmp_path / "blank.txt", tmp_path / "empty.txt"
    blank.write_text("\n \n", encoding="utf-8")
    empty.write_text("", encoding="utf-8")
    qa = qa_predictor(tmp_path, tokenizer)
    for model, data, more, message in (
            (cls, blank, [], "blank.txt: no text (every line is blank)"),
            (cls, empty, [], "empty.txt: no text (empty file)"),
            (cls, lines, ["--text-column", "t"], "--format text has one text per line and "
                                                 "no columns; --text-column applies"),
            (qa, lines, [], "lines.txt: a QA model needs questions with their contexts")):
        assert cli_main(["predict", "--model", str(model.model.folder), "--data", str(data),
                         "--format", "text", "--output", str(tmp_path / "x.csv")] + more) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_predict_scores_rows_whose_label_is_empty(tmp_path, tokenizer):
    table = tmp_path / "some_labelled.csv"
    table.write_text("text,label\nA fine film.,pos\nAwful.,\nNo idea.,neg\n", encoding="utf-8")
    with pytest.raises(DataError, match="row 2: missing label"):
        load_classification(table)  # training and evaluation need every label
    assert load_classification(table, require_labels=False).labels == ["pos", None, "neg"]
    listed = tmp_path / "listed.jsonl"
    listed.write_text('{"text": "a", "label": []}\n', encoding="utf-8")
    with pytest.raises(DataError, match="row 1: .*JSON list"):  # not a missing label
        load_classification(listed, require_labels=False)

    model = BertTextClassifier(backbone(), num_classes=2)
    p = saved(tmp_path, tokenizer, model, "classify",
              {"problem_type": "single_label", "num_classes": 2, "labels": ["neg", "pos"]})
    out = tmp_path / "p.jsonl"
    assert cli_main(["predict", "--model", str(p.model.folder), "--data", str(table),
                     "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["gold"] for r in rows] == ["pos", None, "neg"]
    assert rows[1]["correct"] is None
    assert [r["correct"] for r in rows[::2]] == [r["prediction"] == r["gold"]
                                                 for r in rows[::2]]
    assert [r["prediction"] for r in rows] == [a["label"] for a in p(
        ["A fine film.", "Awful.", "No idea."])]
