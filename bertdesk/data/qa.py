"""Question + context windows with a document stride, answer positions in
token space, and n-best span decoding back to context text."""

from dataclasses import dataclass

import numpy as np


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
    `max_query_length` tokens). Consecutive windows share `doc_stride`
    tokens. A window whose context holds the whole first gold answer gets
    its start/end tokens; others point at [CLS] (as in the reference)."""
    tok = tokenizer._tokenizer
    questions = []
    for ex in examples:
        ids = tok.encode(ex.question, add_special_tokens=False)
        questions.append(ex.question[: ids.offsets[max_query_length - 1][1]]
                         if len(ids.ids) > max_query_length else ex.question)
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="only_second", stride=doc_stride)
    encodings = tok.encode_batch(list(zip(questions, [ex.context for ex in examples])))
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
                if len(idx) and offsets[idx[0], 0] <= s_char and offsets[idx[-1], 1] >= e_char:
                    w.start = int(idx[np.flatnonzero(offsets[idx, 1] > s_char)[0]])
                    w.end = int(idx[np.flatnonzero(offsets[idx, 0] < e_char)[-1]])
            windows.append(w)
    return windows


def decode(examples, windows, start_logits, end_logits, n_best=20, max_answer_length=30,
           null_threshold=None):
    """Best answer text per example id over all its windows.

    Candidate spans take the `n_best` top starts and ends of each window,
    inside the context, end >= start, at most `max_answer_length` tokens.
    With `null_threshold` (SQuAD v2), "" is answered when the best span's
    score does not beat the [CLS] null score by more than the threshold.
    Returns `{id: text}` and `{id: [(score, text), ...]}` (n-best list).
    """
    best = {}
    null = {}
    for w, s_log, e_log in zip(windows, start_logits, end_logits):
        n = len(w.token_ids)
        s_log, e_log = np.asarray(s_log)[:n], np.asarray(e_log)[:n]
        null[w.example] = min(null.get(w.example, np.inf), float(s_log[0] + e_log[0]))
        starts = np.argsort(-s_log)[:n_best]
        ends = np.argsort(-e_log)[:n_best]
        for s in starts:
            if not w.context_mask[s]:
                continue
            for e in ends:
                if not w.context_mask[e] or e < s or e - s + 1 > max_answer_length:
                    continue
                ex = examples[w.example]
                text = ex.context[w.offsets[s, 0]:w.offsets[e, 1]]
                best.setdefault(w.example, []).append((float(s_log[s] + e_log[e]), text))
    answers, nbest = {}, {}
    for i, ex in enumerate(examples):
        cands = sorted(best.get(i, []), key=lambda c: -c[0])[:n_best]
        nbest[ex.id] = cands
        text = cands[0][1] if cands else ""
        if null_threshold is not None and (not cands or null[i] + null_threshold > cands[0][0]):
            text = ""
        answers[ex.id] = text
    return answers, nbest
