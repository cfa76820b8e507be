"""SQuAD v1.1 / v2.0 data and the official evaluation (exact match and F1
after the official answer normalisation, max over gold answers)."""

import collections
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from bertdesk.data.tables import DataError, first_undecodable


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list  # [{"text": str, "answer_start": int}]
    is_impossible: bool = False
    title: str = ""


@dataclass
class QAData:
    examples: list = field(default_factory=list)
    source: str = ""
    version: str = "1.1"

    def __len__(self):
        return len(self.examples)


def read_squad(path, require_answers=True):
    """Read a SQuAD JSON file; every answer's `answer_start` must point at
    its text in the context (checked, with the question id on error)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text ({first_undecodable(path)})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise DataError(f"{path}: expected SQuAD JSON with a top-level 'data' list")
    data = QAData(source=str(path), version=str(raw.get("version", "1.1")))
    seen = set()
    for a, article in enumerate(raw["data"]):
        article = _expect(article, dict, f"{path}: data[{a}]", "an object with 'paragraphs'")
        paragraphs = _expect(article.get("paragraphs", []), list,
                             f"{path}: data[{a}].paragraphs", "a list")
        for p, para in enumerate(paragraphs):
            place = f"data[{a}].paragraphs[{p}]"
            para = _expect(para, dict, f"{path}: {place}", "an object with 'context' and 'qas'")
            context = para.get("context")
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"{path}: {place}: missing or empty context")
            for k, q in enumerate(_expect(para.get("qas", []), list, f"{path}: {place}.qas",
                                          "a list")):
                q = _expect(q, dict, f"{path}: {place}.qas[{k}]",
                            "an object with 'id', 'question' and 'answers'")
                qid = str(q.get("id", ""))
                where = f"{path}: question {qid!r} ({place})"
                if not qid or qid in seen:
                    raise DataError(f"{where}: missing or duplicate id")
                seen.add(qid)
                question = q.get("question", "")
                if not isinstance(question, str) or not question.strip():
                    raise DataError(f"{where}: 'question' must be non-empty text, got "
                                    f"{question!r}")
                impossible = bool(q.get("is_impossible", False))
                answers = _expect(q.get("answers", []), list, f"{where}: 'answers'",
                                  "a list of {\"text\": ..., \"answer_start\": ...} objects "
                                  "(SQuAD's layout, not the datasets library's columns)")
                kept = []
                for ans in answers:
                    ans = _expect(ans, dict, f"{where}: an answer",
                                  "an object with 'text' and 'answer_start'")
                    text, start = ans.get("text"), ans.get("answer_start")
                    if (not isinstance(text, str) or not isinstance(start, int)
                            or isinstance(start, bool)):
                        raise DataError(f"{where}: an answer lacks 'text' or integer 'answer_start'")
                    if not text.strip():
                        if impossible:  # converters' placeholder: {"text": "", "answer_start": -1},
                            continue  # dropped (it counted the question as answerable: HasAns)
                        raise DataError(f"{where}: an answer's text is empty (a question "
                                        "without an answer has 'answers': [] and is_impossible)")
                    if start < 0 or context[start:start + len(text)] != text:
                        raise DataError(
                            f"{where}: answer {text!r} is not at offset {start} of the context "
                            f"(found {context[max(start, 0):max(start, 0) + len(text)]!r})")
                    kept.append(ans)
                answers = kept
                if require_answers and not answers and not impossible:
                    raise DataError(f"{where}: no answers and not marked is_impossible")
                data.examples.append(QAExample(qid, question, context, answers, impossible,
                                               article.get("title", "")))
    if not data.examples:
        raise DataError(f"{path}: no questions found")
    return data


def _expect(value, kind, where, expected):
    if not isinstance(value, kind):
        raise DataError(f"{where}: expected {expected}, got {type(value).__name__} "
                        f"{_short(value)}")
    return value


def _short(value):
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# === Official evaluation (SQuAD v1.1 / v2.0 evaluate scripts) ===
def normalize_answer(s):
    """Lower-case, drop punctuation and the articles a/an/the, squeeze spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction, gold):
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction, gold, v1=False):
    """Token F1 of the normalised answers, as the official v2.0 script has it
    (two answers that normalise to nothing, no answer and no answer, score
    1) or, with `v1`, the v1.1 script (nothing in common scores 0)."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not v1 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def scored_as_v1(data):
    """Whether `data` is scored by the official v1.1 script's rules: a file of
    version 1.x whose every question has an answer. Others by v2.0's (the
    v1.1 script cannot score a question without one)."""
    return (str(data.version).strip().lower().lstrip("v").startswith("1")
            and all(ex.answers and not ex.is_impossible for ex in data.examples))


def gold_texts(ex, v1=False):
    """The gold answers a prediction of `ex` is scored against: every one
    (v1.1), or (v2.0) those that normalise to something, "" where none
    does."""
    if v1:
        return [a["text"] for a in ex.answers] or [""]
    return [a["text"] for a in ex.answers if normalize_answer(a["text"])] or [""]


def answer_scores(prediction, ex, v1=False):
    """(exact match, F1) of `prediction` for `ex`: the best over its gold
    answers, fractions."""
    golds = gold_texts(ex, v1)
    return (max(exact_match(prediction, g) for g in golds),
            max(f1(prediction, g, v1) for g in golds))


def squad_metrics(predictions, data):
    """`predictions`: {id: answer text ('' for no answer)}. Returns percent
    `exact_match` and `f1` (max over each question's gold answers) and
    `total`, by the official script of the data's version
    (`scored_as_v1`); by v2.0's also `HasAns_*` and `NoAns_*` (`exact`,
    `f1`, `total`) for the questions with gold answers and those without,
    where there are any. Answers are compared word by word after the
    script's normalisation (ASCII punctuation, English articles), so an
    answer in a language written without spaces is one word: right or
    wrong as a whole."""
    v1 = scored_as_v1(data)
    em, f, has, no = [], [], [], []
    for ex in data.examples:
        e, s = answer_scores(predictions.get(ex.id, ""), ex, v1)
        em.append(e)
        f.append(s)
        (has if ex.answers else no).append((e, s))
    n = max(1, len(em))
    out = {"exact_match": 100 * sum(em) / n, "f1": 100 * sum(f) / n, "total": len(em)}
    if not v1:
        for name, group in (("HasAns", has), ("NoAns", no)):
            if group:
                out[f"{name}_exact"] = 100 * sum(e for e, _ in group) / len(group)
                out[f"{name}_f1"] = 100 * sum(s for _, s in group) / len(group)
                out[f"{name}_total"] = len(group)
    return out
