"""Predictions on raw text from a fine-tuned model folder.

    predictor = bertdesk.Predictor.load("runs/demo/model")
    predictor(["A gripping plot.", "Dull."])
    # [{"label": "positive", "score": 0.97, "scores": {...}}, ...]

One class for the three tasks `bertdesk finetune` trains, each answering in
the shape its task calls for: labels and probabilities (classification),
entities with character offsets into the text (NER), an answer span of the
context (extractive QA). `bertdesk predict`, `evaluate` and the desktop app
run the same code on files.
"""

import numpy as np

from bertdesk.data.tables import DataError


class Predictor:
    """A fine-tuned model with its tokenizer, ready for raw text.

    Args:
        model: a `FineTunedModel` (`bertdesk.tasks.saving.load_model`).
        batch_size: examples per forward pass.

    Calling it runs the model's task: `classify(texts, text_pairs=None)`,
    `entities(texts)` or `answer(questions, contexts)`. Each takes one
    example (strings) or a list, and answers in kind.
    """

    def __init__(self, model, batch_size=64):
        self.model = model
        self.batch_size = int(batch_size)

    @classmethod
    def load(cls, folder, batch_size=64):
        """The model folder `bertdesk finetune` wrote (`<output>/model`)."""
        from bertdesk.tasks.saving import load_model

        return cls(load_model(folder), batch_size=batch_size)

    # === What the model is ===
    @property
    def task(self):
        """"classify", "ner" or "qa"."""
        return self.model.task

    @property
    def labels(self):
        """Class names (classification), BIO tags (NER), None otherwise."""
        return self.model.labels

    @property
    def max_length(self):
        return self.model.max_length

    def __call__(self, *args, **kwargs):
        return {"classify": self.classify, "ner": self.entities,
                "qa": self.answer}[self.task](*args, **kwargs)

    # === Classification ===
    def classify(self, texts, text_pairs=None):
        """Per text (or pair): single-label models `{"label", "score",
        "scores": {label: probability}}`; multi-label `{"labels": [...],
        "scores": {...}}` (each label's own probability, chosen at 0.5);
        regression `{"value": float}`."""
        from bertdesk.data.tables import ClassificationData
        from bertdesk.training.finetune import predict_scores

        self._expect("classify", "classify")
        texts, single = _as_list(texts, "texts")
        pairs = None
        if text_pairs is not None:
            pairs, _ = _as_list(text_pairs, "text_pairs")
            if len(pairs) != len(texts):
                raise ValueError(f"text_pairs has {len(pairs)} items but texts has {len(texts)}")
        wants_pair = bool(self.model.meta.get("training_args", {}).get("text_pair_column"))
        if wants_pair and pairs is None:
            raise ValueError("this model was trained on text pairs: give text_pairs too")
        data = ClassificationData(texts, pairs, None, "texts", list(range(1, len(texts) + 1)))
        head = self.model.head
        scores = predict_scores(self.model.model, self.model.tokenizer, data, self.max_length,
                                head, batch_size=self.batch_size)
        out = []
        for row in scores:
            if head["problem_type"] == "regression":
                out.append({"value": float(np.ravel(row)[0])})
                continue
            probs = {label: float(p) for label, p in zip(self.labels, row)}
            if head["problem_type"] == "multi_label":
                out.append({"labels": [k for k, p in probs.items() if p >= 0.5],
                            "scores": probs})
            else:
                best = int(np.argmax(row))
                out.append({"label": self.labels[best], "score": float(row[best]),
                            "scores": probs})
        return out[0] if single else out

    # === Token classification ===
    def tag(self, texts):
        """Per text: its words with their tags, as `[{"word", "start", "end",
        "tag", "score"}]` (character offsets into the text). Words are split
        as the model was trained: one per character for a model trained on
        character-per-line (BMES) files, else at whitespace and punctuation
        (each CJK character on its own), as the tokenizer splits them."""
        from bertdesk.data.ner import tag_words

        self._expect("ner", "tag")
        texts, single = _as_list(texts, "texts")
        spans = [self._word_spans(text) for text in texts]
        words = [[text[s:e] for s, e in text_spans] for text, text_spans in zip(texts, spans)]
        tagged = tag_words(self.model.model, self.model.tokenizer, words, self.labels,
                           self.max_length, batch_size=self.batch_size)
        out = [[{"word": w, "start": s, "end": e, "tag": t, "score": p}
                for w, (s, e), t, p in zip(sentence, text_spans, tags, probs)]
               for sentence, text_spans, (tags, probs) in zip(words, spans, tagged)]
        return out[0] if single else out

    def entities(self, texts):
        """Per text: the entities found, `[{"type", "text", "start", "end",
        "score"}]`, strict IOB2 (an entity starts at a B- tag), `start`/`end`
        character offsets into the text, `score` the mean probability of its
        words' tags."""
        from bertdesk.data.ner import entities

        texts, single = _as_list(texts, "texts")
        out = []
        for text, words in zip(texts, self.tag(texts)):
            found = []
            for kind, first, end in entities([w["tag"] for w in words]):
                start, stop = words[first]["start"], words[end - 1]["end"]
                probs = [w["score"] for w in words[first:end] if w["score"] is not None]
                found.append({"type": kind, "text": text[start:stop], "start": start,
                              "end": stop, "score": float(np.mean(probs)) if probs else None})
            out.append(found)
        return out[0] if single else out

    def _word_spans(self, text):
        if self.model.meta.get("training_args", {}).get("format") == "bmes":
            return [(i, i + 1) for i, c in enumerate(text) if not c.isspace()]
        return self.model.tokenizer.word_spans(text)

    # === Extractive QA ===
    def answer(self, questions, contexts):
        """Per question: `{"answer", "start", "end", "score"}`, the answer
        text, its character offsets into the context and its probability
        (start times end, in the window it came from). A SQuAD 2.0 model
        answers "" (start and end None) where it finds no answer. Long
        contexts are read in overlapping windows, as in training."""
        from bertdesk.data.squad import QAData, QAExample
        from bertdesk.data.batching import PaddedBatches, predict_batches
        from bertdesk.data.qa import best_spans, make_windows

        self._expect("qa", "answer")
        questions, single = _as_list(questions, "questions")
        contexts, _ = _as_list(contexts, "contexts")
        if len(contexts) != len(questions):
            raise ValueError(f"contexts has {len(contexts)} items but questions has "
                             f"{len(questions)}")
        for i, (question, context) in enumerate(zip(questions, contexts)):
            if not question.strip() or not context.strip():
                raise ValueError(f"example {i}: empty {'question' if not question.strip() else 'context'}")
        head = self.model.head
        examples = [QAExample(str(i), q, c, []) for i, (q, c) in enumerate(zip(questions, contexts))]
        data = QAData(examples, "questions", head.get("version", "1.1"))
        windows = make_windows(self.model.tokenizer, data.examples, max_length=self.max_length,
                               doc_stride=min(head["doc_stride"], self.max_length // 2))
        logits = predict_batches(self.model.model, PaddedBatches(
            [(w.token_ids, w.segment_ids) for w in windows], None, batch_size=self.batch_size))
        found = best_spans(examples, windows, [lg[:, 0] for lg in logits],
                           [lg[:, 1] for lg in logits],
                           max_answer_length=head["max_answer_length"],
                           null_threshold=head.get("null_threshold"))
        out = [{k: f[k] for k in ("answer", "start", "end", "score")} for f in found]
        return out[0] if single else out

    def _expect(self, task, method):
        if self.task != task:
            names = {"classify": "classify", "ner": "tag or entities", "qa": "answer"}
            raise DataError(f"{self.model.folder}: a {self.task} model; {method}() needs a "
                            f"{task} model (this one answers {names[self.task]}())")


def _as_list(values, name):
    """(list of strings, whether one string was given)."""
    single = isinstance(values, str)
    values = [values] if single else list(values)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"{name}[{i}] is {type(value).__name__}, expected str")
    return values, single


def predict_lines(predictor, path):
    """Predictions for a UTF-8 text file of one example per line (blank
    lines skipped), as rows for `write_rows`: classification `line, text,
    prediction, confidence, p(label)...` (`prediction` alone for
    regression); NER `line, text, words, prediction` (a tag per word)
    `, entities` (`TYPE:text` joined by "; "). Extractive QA needs a
    question and a context per example: SQuAD JSON, not lines."""
    from bertdesk.data.ner import _read_lines, entities

    if predictor.task == "qa":
        raise DataError(f"{path}: a QA model needs questions with their contexts: give a "
                        "SQuAD JSON file (--format squad), not lines of text")
    if predictor.task == "classify" and predictor.model.meta.get(
            "training_args", {}).get("text_pair_column"):
        raise DataError(f"{path}: this model was trained on text pairs; lines hold one text "
                        "each: give a table with both columns instead")
    numbered = [(n, line) for n, line in enumerate(_read_lines(path), 1) if line.strip()]
    if not numbered:
        raise DataError(f"{path}: no text (every line is blank)")
    texts = [line for _, line in numbered]
    rows = []
    if predictor.task == "ner":
        for (n, text), words in zip(numbered, predictor.tag(texts)):
            tags = [w["tag"] for w in words]
            found = [f"{kind}:{text[words[s]['start']:words[e - 1]['end']]}"
                     for kind, s, e in entities(tags)]
            rows.append({"line": n, "text": text, "words": " ".join(w["word"] for w in words),
                         "prediction": " ".join(tags), "entities": "; ".join(found)})
        return rows
    problem = predictor.model.head["problem_type"]
    for (n, text), p in zip(numbered, predictor.classify(texts)):
        row = {"line": n, "text": text}
        if problem == "regression":
            row["prediction"] = p["value"]
        else:
            row["prediction"] = p["label"] if problem == "single_label" else ",".join(p["labels"])
            row["confidence"] = (p["score"] if problem == "single_label" else
                                 min(max(v, 1 - v) for v in p["scores"].values()))
            row.update({f"p({label})": v for label, v in p["scores"].items()})
        rows.append(row)
    return rows
