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
    assert data.examples[0].is_impossible
    assert squad_metrics({"q1": ""}, data)["exact_match"] == 100.0


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
