"""Question + context windows with a document stride, answer positions in
token space, and n-best span decoding back to context text."""

from dataclasses import dataclass

import numpy as np

from bertdesk.tokenizer import span_end


@dataclass
class QAWindow:
    example: int  # index of the QAExample
    token_ids: np.ndarray
    segment_ids: np.ndarray
    offsets: np.ndarray  # (seq, 2) character spans into the context; (0, 0) elsewhere
    context_mask: np.ndarray  # True at context tokens
    start: int = 0  # answer start token (0 = [CLS]: no answer in this window)
    end: int = 0


def make_windows(tokenizer, examples, max_length=384, doc_stride=128, max_query_length=64):
    """Windows over each example's context (question first, truncated to
    `max_query_length` tokens and to half the window). Consecutive windows
    share `doc_stride` tokens, fewer where a long question leaves little
    room: every window moves on by at least a quarter of the context tokens
    it holds. A window whose context holds the whole first gold answer gets
    its start/end tokens; others point at [CLS] (as in the reference)."""
    # [CLS] question [SEP] context [SEP]
    max_query_length = min(max_query_length, (max_length - 3) // 2)
    if max_query_length < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a question and its "
                         "context")
    tok = tokenizer._tokenizer
    tok.no_truncation()  # an earlier call's "only_second" would refuse a lone question
    questions, strides = [], []
    for ex in examples:
        ids = tok.encode(ex.question, add_special_tokens=False)
        questions.append(ex.question[: ids.offsets[max_query_length - 1][1]]
                         if len(ids.ids) > max_query_length else ex.question)
        room = max_length - 3 - min(len(ids.ids), max_query_length)  # context tokens a window
        strides.append(min(doc_stride, room - -(-room // 4)))  # moves on >= room / 4
    tok.no_padding()
    encodings = [None] * len(examples)
    for stride in sorted(set(strides)):  # nearly always one group: the tokenizer's stride
        group = [i for i, s in enumerate(strides) if s == stride]
        tok.enable_truncation(max_length, strategy="only_second", stride=stride)
        for i, enc in zip(group, tok.encode_batch([(questions[i], examples[i].context)
                                                   for i in group])):
            encodings[i] = enc
    windows = []
    for i, (ex, enc) in enumerate(zip(examples, encodings)):
        for e in [enc] + list(enc.overflowing):
            seq = np.array([s if s is not None else -1 for s in e.sequence_ids])
            context_mask = seq == 1
            offsets = np.asarray(e.offsets, np.int32)
            offsets[~context_mask] = 0
            w = QAWindow(i, np.asarray(e.ids, np.int32), np.asarray(e.type_ids, np.int32),
                         offsets, context_mask)
            if ex.answers:
                a = ex.answers[0]
                s_char, e_char = a["answer_start"], a["answer_start"] + len(a["text"])
                idx = np.flatnonzero(context_mask)
                # the window holds the answer if its last token, with the
                # accents no token covers (as `best_spans` reads it), reaches its end
                if (len(idx) and offsets[idx[0], 0] <= s_char
                        and span_end(ex.context, int(offsets[idx[-1], 1])) >= e_char):
                    w.start = int(idx[np.flatnonzero(offsets[idx, 1] > s_char)[0]])
                    w.end = int(idx[np.flatnonzero(offsets[idx, 0] < e_char)[-1]])
            windows.append(w)
    return windows


def decode(examples, windows, start_logits, end_logits, n_best=20, max_answer_length=30,
           null_threshold=None):
    """Best answer text per example id over all its windows.

    Candidate spans take the `n_best` top starts and ends of each window,
    inside the context, end >= start, at most `max_answer_length` tokens.
    With `null_threshold` (SQuAD v2), "" is answered where the lowest [CLS]
    null score minus the best span's score exceeds the threshold (see
    `best_spans`).
    Returns `{id: text}` and `{id: [(score, text), ...]}` (n-best list).
    """
    found = best_spans(examples, windows, start_logits, end_logits, n_best,
                       max_answer_length, null_threshold)
    answers = {ex.id: f["answer"] for ex, f in zip(examples, found)}
    nbest = {ex.id: f["nbest"] for ex, f in zip(examples, found)}
    return answers, nbest


def best_spans(examples, windows, start_logits, end_logits, n_best=20, max_answer_length=30,
               null_threshold=None):
    """`decode`'s answers with their places: per example (in order) a dict
    `answer` (text, "" for none), `start` and `end` (character offsets into
    the context, None for no answer), `score` (the span's probability in its
    window: softmax over the window's context tokens and [CLS] of the start
    logits times that of the end logits; for no answer, [CLS]'s in the
    window whose null score is lowest, the one the decision compares),
    `nbest` ([(logit score, text), ...]),
    `spans`: the n-best spans once each, best first, as `{answer, start, end,
    score}`, and `null_diff`: the lowest null score ([CLS]'s start + end
    logits) over the example's windows minus the best span's (None
    without a span). With `null_threshold` the answer is "" where
    `null_diff` exceeds it: the reference's `null_score_diff_threshold`
    (google-research/bert, transformers' run_qa.py), 0.0 its default;
    `tune_null_threshold` picks one on data with unanswerable questions."""
    best = {}
    null = {}
    for w, s_log, e_log in zip(windows, start_logits, end_logits):
        n = len(w.token_ids)
        s_log, e_log = np.asarray(s_log)[:n], np.asarray(e_log)[:n]
        allowed = np.asarray(w.context_mask[:n]).copy()
        allowed[0] = True  # [CLS]: the null answer
        p_start, p_end = _softmax_over(s_log, allowed), _softmax_over(e_log, allowed)
        null_score = float(s_log[0] + e_log[0])
        if null_score < null.get(w.example, (np.inf, 0.0))[0]:
            null[w.example] = (null_score, float(p_start[0] * p_end[0]))
        starts = np.argsort(-s_log)[:n_best]
        ends = np.argsort(-e_log)[:n_best]
        for s in starts:
            if not w.context_mask[s]:
                continue
            for e in ends:
                if not w.context_mask[e] or e < s or e - s + 1 > max_answer_length:
                    continue
                ex = examples[w.example]
                first = int(w.offsets[s, 0])
                last = span_end(ex.context, int(w.offsets[e, 1]))  # and its dropped accents
                best.setdefault(w.example, []).append(
                    (float(s_log[s] + e_log[e]), ex.context[first:last], first, last,
                     float(p_start[s] * p_end[e])))
    found = []
    for i, ex in enumerate(examples):
        cands = sorted(best.get(i, []), key=lambda c: -c[0])[:n_best]
        out = {"answer": "", "start": None, "end": None,
               "score": null.get(i, (0.0, 0.0))[1] if null_threshold is not None else 0.0,
               "nbest": [(c[0], c[1]) for c in cands], "spans": [],
               "null_diff": null[i][0] - cands[0][0] if cands else None}
        seen = set()
        for _, text, first, last, prob in cands:  # overlapping windows repeat spans
            if (first, last) not in seen:
                seen.add((first, last))
                out["spans"].append({"answer": text, "start": first, "end": last,
                                     "score": prob})
        if cands and (null_threshold is None or out["null_diff"] <= null_threshold):
            _, out["answer"], out["start"], out["end"], out["score"] = cands[0]
        found.append(out)
    return found


def answers_at(found, null_threshold):
    """`best_spans`' answer texts decided again at another null threshold
    (None: the best span always; "" where there is none)."""
    return [f["spans"][0]["answer"] if f["spans"] and (
        null_threshold is None or f["null_diff"] <= null_threshold) else "" for f in found]


def tune_null_threshold(examples, found, metric="f1"):
    """The null threshold with the best mean `metric` ("f1" or
    "exact_match", the official SQuAD 2.0 scores) over `examples`, as the
    official script's `best_f1_thresh` (in the units of the reference's
    null_odds file, `null_diff`): the examples ordered by `null_diff`, the
    best number of them answered by their span and the rest by "".
    Returns (threshold, score in percent); the threshold is halfway between
    the last `null_diff` answered and the next (a logit unit past the
    ends), so `best_spans(..., null_threshold=threshold)` reproduces the
    score. Where the official script differs, this follows what a
    threshold can do: equal differences are answered alike (the script
    may count part of a tie answered, a score no threshold reaches), and a
    span such as "the" that normalises to nothing scores as "" (the
    script counts any non-empty string as an answer)."""
    from bertdesk.data.squad import exact_match, f1, gold_texts

    score = {"f1": f1, "exact_match": exact_match}[metric]
    if not examples:
        raise ValueError("no examples to tune the null threshold on")
    total, gains = 0.0, []
    for ex, f in zip(examples, found):
        golds = gold_texts(ex)  # (v2.0's rules: data with unanswerable questions)
        null = max(score("", g) for g in golds)
        total += null
        if f["null_diff"] is not None:
            span = f["spans"][0]["answer"]
            gains.append((f["null_diff"], max(score(span, g) for g in golds) - null))
    gains.sort(key=lambda g: g[0])  # the surest spans first
    diffs = [d for d, _ in gains]
    best, best_k, running = total, 0, total
    for k, (diff, gain) in enumerate(gains, 1):
        running += gain
        # a threshold cannot split equal diffs: decide after the last of them
        if (k == len(gains) or gains[k][0] > diff) and running > best + 1e-12:
            best, best_k = running, k
    if not diffs:
        threshold = 0.0
    elif best_k == 0:
        threshold = diffs[0] - 1.0
    elif best_k == len(diffs):
        threshold = diffs[-1] + 1.0
    else:
        threshold = (diffs[best_k - 1] + diffs[best_k]) / 2
    return float(threshold), 100.0 * best / len(examples)


def _softmax_over(logits, allowed):
    """Softmax of `logits` over the `allowed` positions (0 elsewhere)."""
    z = np.where(allowed, logits, -np.inf)
    z = np.exp(z - z[allowed].max())
    return z / z.sum()
