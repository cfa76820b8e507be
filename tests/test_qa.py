"""Extractive QA: windows with a stride, answer positions, span decoding
(backend-neutral), and the span model on the current backend."""

import numpy as np
import pytest
from conftest import TINY, random_batch
from harness import check_keras_roundtrip, to_np

import bertdesk
from bertdesk.data.qa import decode, make_windows
from bertdesk.data.squad import QAData, QAExample, squad_metrics
from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer

CONTEXT = ("Bertdesk was written in the winter of 2026 by a small team. It runs BERT on three "
           "backends. The first release shipped a desktop app, and the second one added "
           "pretraining from scratch on raw text collected from public sources.")


def example(qid, question, answer):
    start = CONTEXT.index(answer)
    return QAExample(qid, question, CONTEXT, [{"text": answer, "answer_start": start}])


@pytest.fixture(scope="module")
def tokenizer(minilm_folder):
    return bertdesk.load_tokenizer(minilm_folder)


@pytest.mark.backend_neutral
def test_windows_overlap_and_locate_the_answer(tokenizer):
    examples = [example("a", "When was it written?", "the winter of 2026"),
                example("b", "What did the second release add?", "pretraining from scratch")]
    windows = make_windows(tokenizer, examples, max_length=24, doc_stride=6)
    per_example = [sum(w.example == i for w in windows) for i in range(2)]
    assert min(per_example) > 2  # a long context becomes several windows
    for w in windows:
        assert len(w.token_ids) <= 24
        if w.start:
            span = CONTEXT[w.offsets[w.start, 0]:w.offsets[w.end, 1]]
            assert span == examples[w.example].answers[0]["text"]
    assert all(any(w.start for w in windows if w.example == i) for i in range(2))
    # consecutive windows share context tokens (the stride)
    first, second = [w for w in windows if w.example == 0][:2]
    shared = set(map(tuple, first.offsets[first.context_mask])) & \
        set(map(tuple, second.offsets[second.context_mask]))
    assert len(shared) >= 1


@pytest.mark.backend_neutral
def test_a_long_question_leaves_room_for_the_stride(tokenizer):
    """A question of more than max_length - doc_stride - 4 tokens made the
    tokenizer panic. Now a question takes at most half the window, and the
    windows share fewer than doc_stride tokens where that leaves too little
    room: each moves on by at least a quarter of its context. A lone text
    encoded after that is not truncated."""
    short = example("s", "What did the second release add?", "pretraining from scratch")
    question = "Which of the many releases " + "and versions " * 30 + "added pretraining?"
    long = example("q", question, "pretraining from scratch")
    windows = make_windows(tokenizer, [short, long], max_length=64, doc_stride=24)
    context = len(tokenizer.tokenize(CONTEXT))
    for i, q_tokens in enumerate((len(tokenizer.tokenize(short.question)), 30)):
        mine = [w for w in windows if w.example == i]
        assert all(len(w.token_ids) <= 64 for w in mine)
        assert [len(w.token_ids) - w.context_mask.sum() for w in mine] == [q_tokens + 3] * len(mine)
        room = 64 - 3 - q_tokens
        moves = [w.context_mask.sum() for w in mine[1:]]  # new tokens: all but the shared
        shared = min(24, room - -(-room // 4))
        assert all(m - shared >= room // 4 for m in moves[:-1])
        covered = set().union(*(map(tuple, w.offsets[w.context_mask]) for w in mine))
        assert len(covered) == context  # the whole context is read
        assert any(w.start for w in mine)
    assert len([w for w in windows if w.example == 0]) <= 3  # the short question: stride 24
    assert len(tokenizer.encode(question)) > 64 and len(tokenizer.tokenize(question)) > 62
    with pytest.raises(ValueError, match="no room for a question"):
        make_windows(tokenizer, [short], max_length=4, doc_stride=1)


@pytest.mark.backend_neutral
def test_an_answer_ending_in_an_accent_is_labelled_where_a_window_ends(tokenizer):
    """An uncased tokenizer drops a combining accent, so the last token of
    "Zoe\u0301" ends before the answer does: a window ending at that token
    was labelled "no answer" though decoding reads the accent back."""
    context = "one two three Zoe\u0301 four five six seven eight nine ten"
    for ctx in (context, "He met Zoe\u0301"):
        ex = QAExample("z", "Who?", ctx, [{"text": "Zoe\u0301", "answer_start": ctx.index("Zoe")}])
        windows = make_windows(tokenizer, [ex], max_length=8, doc_stride=2)
        ends_at_answer = [w for w in windows
                          if w.offsets[np.flatnonzero(w.context_mask)[-1], 1] == ctx.index("Zoe") + 3]
        assert ends_at_answer
        for w in ends_at_answer:
            assert w.start and ctx[w.offsets[w.start, 0]:w.offsets[w.end, 1]] == "Zoe"
            starts, ends = np.zeros(len(w.token_ids)), np.zeros(len(w.token_ids))
            starts[w.start], ends[w.end] = 9.0, 9.0
            answers, _ = decode([ex], [w], [starts], [ends])
            assert answers["z"] == "Zoe\u0301"  # the accent read back


@pytest.mark.backend_neutral
def test_an_answer_stops_before_a_following_format_character(tokenizer):
    """Direction marks, zero-width spaces and joiners, and soft hyphens after
    a word are not part of it (they made the answer "Paris\u200e", EM 0)."""
    for mark in ("\u200e", "\u200b", "\u200d", "\xad"):
        ctx = f"He visited Paris{mark} in 2010."
        ex = QAExample("p", "Where?", ctx, [{"text": "Paris", "answer_start": 11}])
        (w,) = make_windows(tokenizer, [ex], max_length=64, doc_stride=16)
        starts, ends = np.zeros(len(w.token_ids)), np.zeros(len(w.token_ids))
        starts[w.start], ends[w.end] = 9.0, 9.0
        answers, _ = decode([ex], [w], [starts], [ends])
        assert answers["p"] == "Paris", repr(mark)
        assert squad_metrics(answers, QAData([ex]))["exact_match"] == 100.0
        assert ctx[slice(*tokenizer.word_spans(ctx)[2])] == "Paris"


@pytest.mark.backend_neutral
def test_decode_picks_the_best_valid_span(tokenizer):
    examples = [example("a", "When was it written?", "the winter of 2026")]
    windows = make_windows(tokenizer, examples, max_length=64, doc_stride=16)
    w = next(w for w in windows if w.start)
    starts = [np.zeros(len(x.token_ids)) for x in windows]
    ends = [np.zeros(len(x.token_ids)) for x in windows]
    k = windows.index(w)
    starts[k][w.start], ends[k][w.end] = 5.0, 5.0
    starts[k][1], ends[k][1] = 9.0, 9.0  # a question token: never an answer
    answers, nbest = decode(examples, windows, starts, ends, max_answer_length=30)
    assert answers["a"] == "the winter of 2026"
    assert squad_metrics(answers, QAData(examples))["exact_match"] == 100.0
    answers, _ = decode(examples, windows, starts, ends, max_answer_length=2)
    assert answers["a"] != "the winter of 2026"  # 5 tokens > max_answer_length
    # v2: the null answer wins when [CLS] scores higher than the best span
    starts[k][0], ends[k][0] = 20.0, 20.0
    answers, _ = decode(examples, windows, starts, ends, null_threshold=0.0)
    assert answers["a"] == ""


def test_span_model(tmp_path):
    model = BertQuestionAnswerer(bertdesk.BertBackbone(**TINY))
    x = random_batch(seq=10)
    out = model(x)
    assert tuple(out["logits"].shape) == (3, 10, 2)
    logits = to_np(out["logits"])
    assert (logits[x["padding_mask"] == 0] <= -1e3).all()  # padding is never chosen
    check_keras_roundtrip(model, x, tmp_path)
    assert set(model.head_tensors()) == {"qa_outputs.weight", "qa_outputs.bias"}
    assert model.head_tensors()["qa_outputs.weight"].shape == (2, TINY["hidden_dim"])


def _found(spans_and_diffs):
    """`best_spans`-shaped decodings: (best span text or None, null_diff)."""
    return [{"spans": [] if text is None else [{"answer": text}],
             "null_diff": None if text is None else diff}
            for text, diff in spans_and_diffs]


@pytest.mark.backend_neutral
def test_the_tuned_null_threshold_is_the_best_of_every_threshold():
    """SQuAD 2.0's `best_f1_thresh`: against a brute force over thresholds
    around every null-score difference, on random answerable and
    unanswerable questions (ties included)."""
    from bertdesk.data.qa import answers_at, tune_null_threshold

    rng = np.random.default_rng(0)
    words = ["red", "blue", "green", "old", "mill", "river"]
    for trial in range(40):
        n = int(rng.integers(1, 12))
        examples, pairs = [], []
        for i in range(n):
            gold = " ".join(rng.choice(words, size=rng.integers(1, 4)))
            impossible = rng.random() < 0.4
            examples.append(QAExample(str(i), "q", gold, [] if impossible else
                                      [{"text": gold, "answer_start": 0}], impossible))
            span = None if rng.random() < 0.1 else " ".join(rng.choice(words, rng.integers(1, 3)))
            pairs.append((span, float(rng.integers(-3, 4)) if trial % 2 else rng.normal()))
        found = _found(pairs)
        data = QAData(examples)
        for metric, key in (("f1", "f1"), ("exact_match", "exact_match")):
            threshold, best = tune_null_threshold(examples, found, metric)
            diffs = sorted({d for span, d in pairs if span is not None} or {0.0})
            candidates = [diffs[0] - 1] + diffs + [diffs[-1] + 1]
            brute = max(squad_metrics(dict(zip(map(str, range(n)), answers_at(found, t))),
                                      data)[key] for t in candidates)
            at = squad_metrics(dict(zip(map(str, range(n)), answers_at(found, threshold))),
                               data)[key]
            assert best == pytest.approx(brute) and at == pytest.approx(brute)
            assert threshold not in diffs  # never on a difference: no tie to break
    with pytest.raises(ValueError, match="no examples"):
        tune_null_threshold([], [])


@pytest.mark.backend_neutral
def test_null_answers_follow_the_reference_rule(tokenizer):
    """An answer is "" exactly where the lowest null score minus the best
    span's score exceeds the threshold (google-research/bert's
    `score_diff > null_score_diff_threshold`), and `answers_at` redecides
    as `best_spans` does."""
    from bertdesk.data.qa import answers_at, best_spans

    examples = [example("a", "When was it written?", "the winter of 2026"),
                example("b", "Who wrote it?", "a small team")]
    windows = make_windows(tokenizer, examples, max_length=40, doc_stride=12)
    rng = np.random.default_rng(1)
    starts = [rng.normal(size=len(w.token_ids)) for w in windows]
    ends = [rng.normal(size=len(w.token_ids)) for w in windows]
    plain = best_spans(examples, windows, starts, ends)
    for i, f in enumerate(plain):
        nulls = [s[0] + e[0] for w, s, e in zip(windows, starts, ends) if w.example == i]
        assert f["null_diff"] == pytest.approx(min(nulls) - f["nbest"][0][0])
        for t in (f["null_diff"] - 1e-6, f["null_diff"] + 1e-6, None):
            again = best_spans(examples, windows, starts, ends, null_threshold=t)
            assert [g["answer"] for g in again] == answers_at(plain, t)
            assert (again[i]["answer"] == "") == (t is not None and f["null_diff"] > t)
