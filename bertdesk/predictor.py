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

import os

import numpy as np

from bertdesk.data.tables import DataError

QUANTIZE_CHOICES = (None, "int8")


class Predictor:
    """A fine-tuned model with its tokenizer, ready for raw text.

    Args:
        model: a `FineTunedModel` (`bertdesk.tasks.saving.load_model`), or
            the path of a model folder.
        batch_size: examples per forward pass.
        quantize: None, or "int8": the model's weights quantized for
            inference first (`bertdesk.quantize_int8`, in place: a
            `FineTunedModel` given here is quantized too).

    Calling it runs the model's task: `classify(texts, text_pairs=None)`,
    `entities(texts)` or `answer(questions, contexts)`. Each takes one
    example (strings) or a list, and answers in kind.
    """

    def __init__(self, model, batch_size=64, quantize=None):
        if quantize not in QUANTIZE_CHOICES:
            raise ValueError(f"quantize={quantize!r}: expected one of {QUANTIZE_CHOICES}")
        if isinstance(model, (str, os.PathLike)):
            from bertdesk.tasks.saving import load_model

            model = load_model(model)
        if not hasattr(model, "task") or not hasattr(model, "head"):
            raise TypeError(f"Predictor takes a model folder or a FineTunedModel "
                            f"(bertdesk.tasks.saving.load_model), got {type(model).__name__}")
        if quantize == "int8":
            from bertdesk.quantization import quantize_int8

            quantize_int8(model.model)
        self.model = model
        self.batch_size = whole_number(batch_size, "batch_size")

    @classmethod
    def load(cls, folder, batch_size=64, quantize=None):
        """The model folder `bertdesk finetune` wrote (`<output>/model`)."""
        from bertdesk.tasks.saving import load_model

        return cls(load_model(folder), batch_size=batch_size, quantize=quantize)

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
        args = self.model.meta.get("training_args", {})
        wants_pair = bool(args.get("text_pair_column"))
        if wants_pair and pairs is None:
            raise ValueError("this model was trained on text pairs: give text_pairs too")
        if pairs is not None and "text_pair_column" in args and not wants_pair:
            # (a model transformers trained does not say: either is taken)
            raise ValueError("this model was trained on single texts: give no text_pairs")
        for name, values in (("texts", texts), ("text_pairs", pairs or [])):
            empty = next((i for i, v in enumerate(values) if not v.strip()), None)
            if empty is not None:
                raise ValueError(f"{name}[{empty}] is empty: a classifier needs text")
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
    def tag(self, texts, is_split_into_words=False):
        """Per text: its words with their tags, as `[{"word", "start", "end",
        "tag", "score"}]` (character offsets into the text). Words are split
        as the model was trained: one per character for a model trained on
        character-per-line (BMES) files, else at whitespace and punctuation
        (each CJK character on its own), as the tokenizer splits them.

        `is_split_into_words=True` (as transformers' token-classification
        pipeline): `texts` is one sentence as a list of words, or a list of
        such lists, tagged word for word as `evaluate` tags a CoNLL file
        (`U.S.` stays one word); offsets are into the words joined by single
        spaces."""
        from bertdesk.data.ner import tag_words

        self._expect("ner", "tag")
        if is_split_into_words:
            words, single = _as_word_lists(texts)
            spans = [_joined_spans(sentence) for sentence in words]
        else:
            texts, single = _as_list(texts, "texts")
            spans = [self._word_spans(text) for text in texts]
            words = [[text[s:e] for s, e in text_spans]
                     for text, text_spans in zip(texts, spans)]
        tagged = tag_words(self.model.model, self.model.tokenizer, words, self.labels,
                           self.max_length, batch_size=self.batch_size)
        out = [[{"word": w, "start": s, "end": e, "tag": t, "score": p}
                for w, (s, e), t, p in zip(sentence, text_spans, tags, probs)]
               for sentence, text_spans, (tags, probs) in zip(words, spans, tagged)]
        return out[0] if single else out

    def entities(self, texts, strict=False, is_split_into_words=False):
        """Per text: the entities found, `[{"type", "text", "start", "end",
        "score"}]`, `start`/`end` character offsets into the text, `score` the
        mean probability of its words' tags. An entity starts at a B- tag, or
        at an I- tag after O or after another type (as Hugging Face's
        pipelines, seqeval's default mode and the metrics read them);
        `strict=True` drops those (seqeval's strict IOB2). A model whose labels
        are BIOES/BMES or IO (a checkpoint trained elsewhere) is read by its
        own scheme (`bertdesk.data.ner.to_bio`).
        `is_split_into_words=True`: words given, as for `tag` (offsets and
        text from the words joined by single spaces)."""
        from bertdesk.data.ner import entities, is_bio, to_bio

        self._expect("ner", "entities")
        strict = strict and is_bio(self.labels)
        if is_split_into_words:
            sentences, single = _as_word_lists(texts)
            texts = [" ".join(words) for words in sentences]
            tagged = self.tag(sentences, is_split_into_words=True)
        else:
            texts, single = _as_list(texts, "texts")
            tagged = self.tag(texts)
        out = []
        for text, words in zip(texts, tagged):
            found = []
            tags = [w["tag"] for w in words]
            for kind, first, end in entities(tags if strict else to_bio(tags)):
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
    def answer(self, questions, contexts, top_k=1, null_threshold="model"):
        """Per question: `{"answer", "start", "end", "score"}`, the answer
        text, its character offsets into the context and its probability
        (start times end, in the window it came from). A SQuAD 2.0 model
        answers "" (start and end None) where it finds no answer, as any model
        does for a context without a token. Long contexts are read in
        overlapping windows, as in training. One question with several
        contexts (or one context with several questions) is asked of each.
        `top_k` > 1: a list of up to that many answers per question, best
        first (different spans; for SQuAD 2.0 the no-answer first where it
        wins).

        `null_threshold`: "model" (the model's own: tuned on the validation
        set when it was fine-tuned on SQuAD 2.0, None for SQuAD 1.1 and for
        transformers folders, whose config does not say), a number (answer
        "" where the null answer's start + end logits beat the best span's
        by more than that: the reference's `null_score_diff_threshold`, 0.0
        its default) or None (always a span)."""
        from bertdesk.data.squad import QAData, QAExample
        from bertdesk.data.batching import predict_encodings
        from bertdesk.data.qa import best_spans, make_windows

        self._expect("qa", "answer")
        top_k = whole_number(top_k, "top_k")
        questions, single_question = _as_list(questions, "questions")
        contexts, single_context = _as_list(contexts, "contexts")
        if single_question and not single_context:
            questions = questions * len(contexts)
        elif single_context and not single_question:
            contexts = contexts * len(questions)
        single = single_question and single_context
        if len(contexts) != len(questions):
            raise ValueError(f"contexts has {len(contexts)} items but questions has "
                             f"{len(questions)}")
        for i, (question, context) in enumerate(zip(questions, contexts)):
            if not question.strip() or not context.strip():
                raise ValueError(f"example {i}: empty {'question' if not question.strip() else 'context'}")
        head = self.model.head
        if null_threshold == "model":
            null_threshold = head.get("null_threshold")
        elif null_threshold is not None:
            null_threshold = _finite(null_threshold)
        examples = [QAExample(str(i), q, c, []) for i, (q, c) in enumerate(zip(questions, contexts))]
        data = QAData(examples, "questions", head.get("version", "1.1"))
        windows = make_windows(self.model.tokenizer, data.examples, max_length=self.max_length,
                               doc_stride=min(head["doc_stride"], self.max_length // 2))
        logits = predict_encodings(self.model.model, [(w.token_ids, w.segment_ids)
                                                      for w in windows], self.batch_size)
        found = best_spans(examples, windows, [lg[:, 0] for lg in logits],
                           [lg[:, 1] for lg in logits],
                           max_answer_length=head["max_answer_length"],
                           null_threshold=null_threshold)
        keys = ("answer", "start", "end", "score")
        if top_k == 1:
            out = [{k: f[k] for k in keys} for f in found]
        else:
            out = []
            for f in found:
                spans = f["spans"][:top_k]
                if f["start"] is None and (null_threshold is not None or not spans):
                    # no answer first, as top_k=1 answers (also where no span was found)
                    spans = [{k: f[k] for k in keys}] + spans[:top_k - 1]
                out.append(spans)
        return out[0] if single else out

    def _expect(self, task, method):
        if self.task != task:
            names = {"classify": "classify", "ner": "tag or entities", "qa": "answer"}
            raise ValueError(f"{self.model.folder}: a {self.task} model; {method}() needs a "
                             f"{task} model (this one answers {names[self.task]}())")


def whole_number(value, name):
    """`value` when it is a whole number >= 1 (an int, not a bool); else a
    ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _finite(threshold):
    """`answer`'s numeric null threshold as a float (or a clear error)."""
    try:
        value = None if isinstance(threshold, (str, bool)) else float(threshold)
    except (TypeError, ValueError):
        value = None
    if value is None or not np.isfinite(value):
        raise ValueError(f"null_threshold must be 'model', a finite number or None, "
                         f"got {threshold!r}")
    return value


def _as_word_lists(values):
    """(list of sentences as lists of words, whether one sentence was
    given) for `is_split_into_words=True`."""
    def words_of(value, where):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise TypeError(f"with is_split_into_words=True, {where} must be a list of words "
                            f"(strings), got {type(value).__name__}")
        for i, word in enumerate(value):
            if not isinstance(word, str):
                raise TypeError(f"{where}[{i}] is {type(word).__name__}, expected a word (str)")
        return list(value)

    if isinstance(values, (list, tuple)) and any(isinstance(v, str) for v in values):
        if not all(isinstance(v, str) for v in values):
            raise TypeError("with is_split_into_words=True, texts is one sentence (a list of "
                            "words) or a list of sentences (lists of words), not a mix of "
                            "words and lists")
        return [words_of(values, "texts")], True
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        words_of(values, "texts")  # raises
    return [words_of(v, f"texts[{i}]") for i, v in enumerate(values)], False


def _joined_spans(words):
    """Each word's (start, end) in `" ".join(words)`."""
    spans, start = [], 0
    for word in words:
        spans.append((start, start + len(word)))
        start += len(word) + 1
    return spans


def _as_list(values, name):
    """(list of strings, whether one string was given)."""
    single = isinstance(values, str)
    if not single and (values is None or isinstance(values, (bytes, bytearray)) or
                       not hasattr(values, "__iter__")):
        raise TypeError(f"{name} must be a string or a list of strings, got "
                        f"{type(values).__name__}")
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
    `, entities` (`TYPE:text` joined by "; ", read as `Predictor.entities`
    reads them). Extractive QA needs a
    question and a context per example: SQuAD JSON, not lines."""
    from bertdesk.data.ner import _read_lines, entities, to_bio

    if predictor.task == "qa":
        raise DataError(f"{path}: a QA model needs questions with their contexts: give a "
                        "SQuAD JSON file (--format squad), not lines of text")
    if predictor.task == "classify" and predictor.model.meta.get(
            "training_args", {}).get("text_pair_column"):
        raise DataError(f"{path}: this model was trained on text pairs; lines hold one text "
                        "each: give a table with both columns instead")
    lines = _read_lines(path)
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise DataError(f"{path}: no text ({'every line is blank' if lines else 'empty file'})")
    texts = [line for _, line in numbered]
    rows = []
    if predictor.task == "ner":
        for (n, text), words in zip(numbered, predictor.tag(texts)):
            tags = [w["tag"] for w in words]
            found = [f"{kind}:{text[words[s]['start']:words[e - 1]['end']]}"
                     for kind, s, e in entities(to_bio(tags))]  # as entities()
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
