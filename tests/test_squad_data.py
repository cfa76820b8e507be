"""SQuAD reading and the official evaluation (normalisation, EM, F1)."""

import json

import pytest

from bertdesk.data.squad import exact_match, f1, normalize_answer, read_squad, squad_metrics
from bertdesk.data.tables import DataError

pytestmark = pytest.mark.backend_neutral

CONTEXT = "The Eiffel Tower was completed in 1889 in Paris, France."


def squad_file(tmp_path, qas, version="1.1"):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": version, "data": [
        {"title": "T", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}))
    return path


def test_normalisation_is_the_official_one():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE fig") == "apple pear and fig"
    assert normalize_answer("theater") == "theater"  # articles only as words


def test_em_and_f1_hand_worked():
    assert exact_match("the Eiffel Tower", "Eiffel Tower") == 1.0
    # pred "in 1889 in paris" vs gold "1889": common 1, P=1/4, R=1 -> F1 = 0.4
    assert f1("in 1889 in Paris", "1889") == pytest.approx(0.4)
    assert f1("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1("", "") == 1.0 and f1("x", "") == 0.0


def test_metrics_take_the_best_gold_and_are_percent(tmp_path):
    data = read_squad(squad_file(tmp_path, [
        {"id": "q1", "question": "When?", "answers": [
            {"text": "1889", "answer_start": 34}, {"text": "in 1889", "answer_start": 31}]},
        {"id": "q2", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 42}]},
    ]))
    m = squad_metrics({"q1": "in 1889", "q2": "Paris, France"}, data)
    assert m["exact_match"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx(100 * (1.0 + 2 * 0.5 / 1.5) / 2)


def test_v2_no_answer(tmp_path):
    data = read_squad(squad_file(tmp_path, [
        {"id": "q1", "question": "Who painted it?", "answers": [], "is_impossible": True},
        {"id": "q2", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 42}]},
    ], version="v2.0"))
    m = squad_metrics({"q1": "", "q2": "Paris"}, data)
    assert m["exact_match"] == 100.0 and m["NoAns_exact"] == 100.0 and m["HasAns_f1"] == 100.0


def test_bad_squad_files(tmp_path):
    with pytest.raises(DataError, match=r"question 'q1' .*answer 'Paris' is not at offset 10"):
        read_squad(squad_file(tmp_path, [{"id": "q1", "question": "Where?",
                                          "answers": [{"text": "Paris", "answer_start": 10}]}]))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(DataError, match="bad.json: expected SQuAD JSON"):
        read_squad(bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad.json: not valid JSON \(line 1"):
        read_squad(bad)


@pytest.mark.parametrize("qas, message", [
    # the datasets library's columns, not SQuAD's layout
    ([{"id": "q1", "question": "Where?", "answers": {"text": ["Paris"], "answer_start": [49]}}],
     r"question 'q1' \(data\[0\]\.paragraphs\[0\]\): 'answers': expected a list of .*got dict"),
    ([{"id": "q1", "question": None, "answers": []}],
     r"question 'q1' .*'question' must be non-empty text, got None"),
    ([{"id": "q1", "question": 7, "answers": []}], r"'question' must be non-empty text, got 7"),
    (["what?"], r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: expected an object .*got str \"what\?\""),
    ([{"id": "q1", "question": "Where?", "answers": ["Paris"]}],
     r"question 'q1' .*: an answer: expected an object with 'text' and 'answer_start', got str"),
    # an empty answer matches the empty slice at any offset: refused, not trained
    ([{"id": "q1", "question": "Where?", "answers": [{"text": "", "answer_start": 999}]}],
     r"question 'q1' .*an answer's text is empty"),
    ([{"id": "q1", "question": "Where?", "answers": [{"text": "France.", "answer_start": -7}]}],
     r"answer 'France\.' is not at offset -7"),
])
def test_squad_structure_errors_name_the_place(tmp_path, qas, message):
    with pytest.raises(DataError, match=message):
        read_squad(squad_file(tmp_path, qas))


def test_unanswerable_questions_placeholder_answer(tmp_path):
    # converters write {"text": "", "answer_start": -1} for SQuAD v2's unanswerable questions
    data = read_squad(squad_file(tmp_path, [
        {"id": "q1", "question": "Who?", "is_impossible": True,
         "answers": [{"text": "", "answer_start": -1}]}], version="v2.0"))
    assert data.examples[0].is_impossible and data.examples[0].answers == []
    scores = squad_metrics({"q1": ""}, data)
    assert scores["exact_match"] == 100.0
    assert scores["NoAns_total"] == 1 and "HasAns_total" not in scores  # it counted as HasAns


def test_squad_data_and_paragraph_structure_and_byte_order_mark(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [[1, 2]]}))
    with pytest.raises(DataError, match=r"bad.json: data\[0\]: expected an object with "
                                        r"'paragraphs', got list \[1, 2\]"):
        read_squad(bad)
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": {}}]}]}))
    with pytest.raises(DataError, match=r"data\[0\]\.paragraphs\[0\]\.qas: expected a list"):
        read_squad(bad)
    good = squad_file(tmp_path, [{"id": "q1", "question": "Where?",
                                  "answers": [{"text": "Paris", "answer_start": 42}]}])
    good.write_bytes(b"\xef\xbb\xbf" + good.read_bytes())
    assert read_squad(good).examples[0].answers == [{"text": "Paris", "answer_start": 42}]
    bad.write_bytes(b'{"data": [],\n "title": "caf\xe9"}')
    with pytest.raises(DataError, match=r"bad.json: not UTF-8 text \(line 2: undecodable byte "
                                        r"0xe9 at byte 27 of the file"):
        read_squad(bad)


# The official scripts' scoring, line for line (evaluate-v1.1.py, evaluate-v2.0.py)
def _official_f1_v1(prediction, ground_truth):
    import collections

    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _official_v1(dataset, predictions):
    f1 = exact = total = 0
    for qa in dataset:
        total += 1
        golds = [a["text"] for a in qa["answers"]]
        exact += max(float(normalize_answer(predictions[qa["id"]]) == normalize_answer(g))
                     for g in golds)
        f1 += max(_official_f1_v1(predictions[qa["id"]], g) for g in golds)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def _official_v2(dataset, predictions):
    exact, f1, has = {}, {}, {}
    for qa in dataset:
        qid = qa["id"]
        has[qid] = bool(qa["answers"])
        golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
        exact[qid] = max(int(normalize_answer(g) == normalize_answer(predictions[qid]))
                         for g in golds)
        f1[qid] = max(_compute_f1_v2(g, predictions[qid]) for g in golds)
    out = {"exact_match": 100.0 * sum(exact.values()) / len(exact),
           "f1": 100.0 * sum(f1.values()) / len(f1), "total": len(exact)}
    for name, ids in (("HasAns", [k for k, v in has.items() if v]),
                      ("NoAns", [k for k, v in has.items() if not v])):
        if ids:
            out[f"{name}_exact"] = 100.0 * sum(exact[k] for k in ids) / len(ids)
            out[f"{name}_f1"] = 100.0 * sum(f1[k] for k in ids) / len(ids)
            out[f"{name}_total"] = len(ids)
    return out


def _compute_f1_v2(a_gold, a_pred):
    import collections

    gold_toks, pred_toks = normalize_answer(a_gold).split(), normalize_answer(a_pred).split()
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = 1.0 * num_same / len(pred_toks), 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


WORDS = ["the", "The", "a", "an", ".", ",", "Paris", "paris", "1889", "tower", "Eiffel",
         "in", "!", "France", "of"]


@pytest.mark.parametrize("version", ["1.1", "v2.0"])
def test_metrics_match_the_official_scripts_on_random_answers(version):
    """Answers drawn from words that normalise away ("the", ".") and words
    that do not: v1.1 files scored by the v1.1 script (every gold answer;
    nothing in common scores 0, even two empty answers), v2.0 files by the
    v2.0 script (with its HasAns/NoAns split)."""
    import random

    from bertdesk.data.squad import QAData, QAExample

    rng = random.Random(0)

    def text():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))

    for _ in range(300):
        qas, examples, preds = [], [], {}
        for i in range(rng.randint(1, 6)):
            golds = [text() for _ in range(rng.randint(1, 3))]
            if version != "1.1" and rng.random() < 0.3:
                golds = []
            answers = [{"text": g, "answer_start": 0} for g in golds]
            qas.append({"id": f"q{i}", "answers": answers})
            examples.append(QAExample(f"q{i}", "?", "context", answers, not golds))
            preds[f"q{i}"] = "" if rng.random() < 0.2 else text()
        data = QAData(examples, "random", version)
        ours = squad_metrics(preds, data)
        official = (_official_v1 if version == "1.1" else _official_v2)(qas, preds)
        assert ours == pytest.approx({"total": len(qas), **official})


def test_rows_score_each_question_as_the_metrics_do(tmp_path):
    """The per-question rows of a QA evaluation agree with the totals: a gold
    answer "." scored by v1.1's rules (as the v1.1 script: EM 1, F1 0 for
    the prediction "the")."""
    from bertdesk.training.tasks import TASKS

    data = read_squad(squad_file(tmp_path, [
        {"id": "q1", "question": "Which?", "answers": [{"text": ".", "answer_start": 55}]},
        {"id": "q2", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 42}]},
    ]))
    preds = {"q1": "the", "q2": "Paris France"}
    rows = TASKS["qa"].rows(preds, data, {"version": "1.1"})
    metrics = squad_metrics(preds, data)
    assert [r["exact_match"] for r in rows] == [1.0, 0.0]
    assert [r["f1"] for r in rows] == pytest.approx([0.0, 2 / 3])
    assert metrics["exact_match"] == pytest.approx(100 * sum(r["exact_match"] for r in rows) / 2)
    assert metrics["f1"] == pytest.approx(100 * sum(r["f1"] for r in rows) / 2)
    assert "HasAns_exact" not in metrics  # v1.1: no split


def test_rows_of_questions_without_gold_answers_are_not_scored(tmp_path):
    """`predict` on questions alone (no answers, not marked impossible): no
    gold, no score, as classification leaves unlabelled rows (every row read
    gold "", exact match 0, wrong); a v2 impossible question is still scored."""
    from bertdesk.training.tasks import TASKS

    data = read_squad(squad_file(tmp_path, [
        {"id": "q1", "question": "Which?", "answers": []},
        {"id": "q2", "question": "Where?", "answers": [], "is_impossible": True},
    ], version="v2.0"), require_answers=False)
    rows = TASKS["qa"].rows({"q1": "Paris", "q2": ""}, data, {"version": "2.0"})
    assert [(r["gold"], r["exact_match"], r["f1"], r["correct"]) for r in rows] == [
        (None, None, None, None), ("", 1.0, 1.0, True)]


def test_v2_file_of_answerable_questions_has_its_has_answer_scores(tmp_path):
    data = read_squad(squad_file(tmp_path, [
        {"id": "q2", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 42}]},
    ], version="v2.0"))
    m = squad_metrics({"q2": "Paris"}, data)
    assert m["HasAns_exact"] == 100.0 and m["HasAns_total"] == 1 and "NoAns_exact" not in m


@pytest.mark.parametrize("seed", range(6))
def test_the_validation_split_holds_out_whole_articles_near_the_fraction(seed):
    """Articles of 20, 20, 200 and 5 questions: about a tenth of the
    questions held out, whole articles only (a tenth of the articles held
    out the 200-question one for some seeds: 200 of 245)."""
    from bertdesk.data.squad import QAData, QAExample
    from bertdesk.training.tasks import QaTask

    sizes = {"a": 20, "b": 20, "c": 200, "d": 5}
    data = QAData([QAExample(f"{t}{i}", "?", "context", [], True, t)
                   for t, n in sizes.items() for i in range(n)], "x", "2.0")
    train, validation = QaTask().split(data, 0.1, seed)
    held = {ex.title for ex in validation.examples}
    assert held and not held & {ex.title for ex in train.examples}
    assert len(train) + len(validation) == 245
    assert 1 <= len(validation) <= 25  # at most the fraction, rounded: 24.5 -> 24 or 25
    # nothing fits a tiny fraction: the smallest article, not a random one
    _, smallest = QaTask().split(data, 0.01, seed)
    assert {ex.title for ex in smallest.examples} == {"d"}


def test_rows_say_where_the_answer_starts(tmp_path):
    """A row gives the predicted answer's start in the context (SQuAD's
    answer_start): the app highlighted the first occurrence of its text,
    which for "Paris" here is not where the model found it."""
    from bertdesk.data.squad import QAData, QAExample
    from bertdesk.training.tasks import Answers, TASKS

    context = "Paris is far. The capital of France is Paris."
    at = context.rindex("Paris")
    examples = [QAExample("q1", "Capital?", context, [{"text": "Paris", "answer_start": at}]),
                QAExample("q2", "Never?", context, [], is_impossible=True)]
    found = [{"spans": [{"answer": "Paris", "start": at, "end": at + 5, "score": 0.9}],
              "null_diff": -5.0},
             {"spans": [{"answer": "far", "start": 9, "end": 12, "score": 0.2}],
              "null_diff": 3.0}]
    scores = Answers(examples, found, 0.0)
    assert dict(scores) == {"q1": "Paris", "q2": ""}
    rows = TASKS["qa"].rows(scores, QAData(examples, "x.json", "2.0"), {"version": "2.0"})
    assert [r["start"] for r in rows] == [at, None]
    assert TASKS["qa"].rows({"q1": "Paris", "q2": ""}, QAData(examples, "x.json", "2.0"),
                            {"version": "2.0"})[0]["start"] is None  # no decoding: not known
