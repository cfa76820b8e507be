"""What differs between fine-tuning tasks, behind one interface: reading data,
the label set, targets, the model and loss, predictions, metrics and rows.
`run_finetune` and the command line drive any task through it."""

import numpy as np

from bertdesk.data.tables import DataError


class ClassifyTask:
    """Text classification: single texts or pairs; single-label, multi-label
    or regression."""

    name = "classify"

    def load(self, path, options, require_labels=True):
        from bertdesk.data.tables import load_classification

        return load_classification(
            path, text_column=options.get("text_column") or "text",
            text_pair_column=options.get("text_pair_column"),
            label_column=options.get("label_column") or "label",
            problem_type=options.get("problem_type") or "single_label",
            label_separator=options.get("label_separator") or ",",
            require_labels=require_labels)

    def split(self, data, fraction, seed):
        from bertdesk.data.tables import stratified_split, subset

        tr, va = stratified_split(data.labels, fraction, seed)
        return subset(data, tr), subset(data, va)

    def make_head(self, train, config):
        from bertdesk.training.finetune import _natural_key, class_weights_for

        if config.problem_type == "regression":
            class_weights_for(train, None, config)  # refuses a class weight
            return {"problem_type": "regression", "num_classes": 1, "labels": None}
        seen = (set(train.labels) if config.problem_type == "single_label"
                else {label for labels in train.labels for label in labels})
        labels = sorted(seen, key=_natural_key)
        if config.problem_type == "single_label" and len(labels) < 2:
            raise DataError(f"{config.train}: only one label ({labels}) in the training data")
        head = {"problem_type": config.problem_type, "num_classes": len(labels), "labels": labels}
        weights = class_weights_for(train, labels, config)
        if weights is not None:
            head[WEIGHTS_KEY[config.problem_type]] = weights
        return head

    def targets(self, data, head):
        from bertdesk.training.finetune import targets_for

        return targets_for(data, head)

    def dataset(self, tokenizer, data, head, config, train=False):
        from bertdesk.training.finetune import make_dataset

        return make_dataset(tokenizer, data, config.max_length, config.batch_size,
                            self.targets(data, head) if train else None, shuffle=train,
                            seed=config.seed, bucket=config.bucket is not False,
                            dynamic_padding=config.dynamic_padding or not train,
                            pad_to_multiple=config.pad_to_multiple,
                            max_shapes=config.max_shapes,
                            bucket_batches=config.bucket_batches)

    def build_model(self, backbone, head):
        from bertdesk.tasks.bert_text_classifier import BertTextClassifier

        return BertTextClassifier(backbone, num_classes=head["num_classes"],
                                  problem_type=head["problem_type"])

    def loss(self, head):
        import keras

        from bertdesk.tasks import class_weighted_crossentropy as weighted

        if head.get("class_weights"):
            return weighted.ClassWeightedCrossentropy(head["class_weights"])
        if head.get("positive_weights"):
            return weighted.PositiveWeightedBinaryCrossentropy(head["positive_weights"])
        return {"single_label": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                "multi_label": keras.losses.BinaryCrossentropy(from_logits=True),
                "regression": keras.losses.MeanSquaredError()}[head["problem_type"]]

    def monitor(self, head):
        return {"single_label": "accuracy", "multi_label": "macro_f1",
                "regression": "pearson"}[head["problem_type"]]

    def calibrate(self, scores, data, head):
        """Settings of `head` tuned on the validation scores after each
        epoch (QA's null threshold); the scores as they stand at them."""
        return scores

    def scores(self, model, tokenizer, data, head, max_length):
        from bertdesk.training.finetune import predict_scores

        return predict_scores(model, tokenizer, data, max_length, head)

    def metrics(self, scores, data, head):
        from bertdesk.training.finetune import compute_metrics

        return compute_metrics(scores, data, head)

    def rows(self, scores, data, head):
        from bertdesk.training.finetune import prediction_rows

        return prediction_rows(scores, data, head)

    def describe(self, train, validation, head):
        text = (f"data: {len(train)} training, {len(validation)} validation examples; "
                + ("a regression target" if head.get("problem_type") == "regression"
                   else f"labels: {head['labels']}"))
        for key, name in (("class_weights", "class weights"),
                          ("positive_weights", "weights of positive examples")):
            if head.get(key):
                text += f"; {name}: " + ", ".join(
                    f"{label} {w:.3g}" for label, w in zip(head["labels"], head[key]))
        return text


# where a classifier's head keeps the weights of `--class-weight`
WEIGHTS_KEY = {"single_label": "class_weights", "multi_label": "positive_weights"}


class NerTask:
    """Token classification over words in BIO tags (CoNLL column files or
    character-per-line BMES/BIO files)."""

    name = "ner"

    def load(self, path, options, require_labels=True):
        from bertdesk.data.ner import read_char_tags, read_conll

        fmt = options.get("format") or "conll"
        if fmt not in ("conll", "bmes"):
            raise DataError(f"{path}: --format {fmt!r} is not a NER format (conll or bmes)")
        return (read_conll(path, require_tags=require_labels) if fmt == "conll"
                else read_char_tags(path))

    def split(self, data, fraction, seed):
        """Random sentences held out, except that a sentence holding an
        entity type no training sentence has goes to training (the labels
        come from the training part: a type seen only in the held-out part
        failed the run, or not, by the seed)."""
        from bertdesk.data.ner import TaggedSentences

        rng = np.random.default_rng(seed)
        order = rng.permutation(len(data.words))
        n_val = max(1, int(round(len(order) * fraction)))
        val, tr = list(order[:n_val]), list(order[n_val:])
        kinds = [{t[2:] for t in tags if t != "O"} for tags in data.tags]
        trained = set().union(*(kinds[i] for i in tr))
        for i in list(val):
            if not kinds[i] - trained:
                continue
            val.remove(i)
            tr.append(i)
            trained |= kinds[i]
            if not val:  # it held out the last: one whose types others cover goes instead
                spare = next((j for j in tr if j != i and not kinds[j] - set().union(
                    *(kinds[k] for k in tr if k != j))), None)
                if spare is not None:
                    tr.remove(spare)
                    val.append(spare)
        val, tr = sorted(val), sorted(tr)
        pick = lambda idx: TaggedSentences([data.words[i] for i in idx],  # noqa: E731
                                           [data.tags[i] for i in idx], data.source,
                                           [data.lines[i] for i in idx])
        return pick(tr), pick(val)

    def make_head(self, train, config):
        tags = {t for sentence in train.tags for t in sentence} | {"O"}
        kinds = sorted({t[2:] for t in tags if t != "O"})
        if not kinds:
            raise DataError(f"{config.train}: no entities in the training data")
        labels = ["O"] + [f"{p}-{k}" for k in kinds for p in ("B", "I")]
        return {"problem_type": "token_classification", "num_classes": len(labels),
                "labels": labels}

    def targets(self, data, head):
        """{tag: class index}, after checking that the model knows each
        entity type of `data` (its tags IOB2, as the readers give them). By
        type, not tag: a model trained elsewhere may tag in BIOES/BMES or IO,
        or in IOB1 without some B-X (CoNLL-2003's own IOB1 training data has
        no B-PER); its predictions are read as IOB2 (`scores`). A head this
        package trains has both tags of every type it learnt."""
        labels = head["labels"]
        index = {label: i for i, label in enumerate(labels)}
        kinds = {label[2:] if label[:2] in ("B-", "I-", "M-", "E-", "S-") else label
                 for label in labels if label != "O"}
        for sentence, line in zip(data.tags, data.lines):
            for offset, tag in enumerate(sentence):
                if tag != "O" and tag[2:] not in kinds:
                    raise DataError(f"{data.source}: line {line + offset}: tag {tag!r} is not "
                                    f"one the model knows ({', '.join(labels)})")
        return index

    def dataset(self, tokenizer, data, head, config, train=False):
        from bertdesk.data.batching import PaddedBatches
        from bertdesk.data.ner import align_tags
        from bertdesk.tasks.bert_token_classifier import IGNORE_INDEX

        enc, cut = tokenizer.encode_words(data.words, max_length=config.max_length,
                                          return_cut=True)
        targets = align_tags(enc, data.tags, self.targets(data, head)) if train else None
        # Bucketing by length cost 2.7 entity-F1 points on CoNLL-2003 (README),
        # so token classification leaves it off unless asked.
        batches = PaddedBatches(enc, targets, batch_size=config.batch_size, shuffle=train,
                                seed=config.seed, bucket=bool(config.bucket),
                                fixed_length=None if (config.dynamic_padding or not train)
                                else config.max_length,
                                pad_to_multiple=config.pad_to_multiple,
                                max_shapes=config.max_shapes,
                                bucket_batches=config.bucket_batches,
                                target_pad_value=IGNORE_INDEX if train else None)
        batches.cut = cut  # sentences longer than max_length: training sees their start
        return batches

    def build_model(self, backbone, head):
        from bertdesk.tasks.bert_token_classifier import BertTokenClassifier

        backbone.pooler.trainable = False  # unused by a per-token head (no gradient)
        return BertTokenClassifier(backbone, num_classes=head["num_classes"])

    def loss(self, head):
        import keras

        from bertdesk.tasks.bert_token_classifier import IGNORE_INDEX

        return keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                          ignore_class=IGNORE_INDEX)

    def monitor(self, head):
        return "f1"

    def calibrate(self, scores, data, head):
        return scores

    def scores(self, model, tokenizer, data, head, max_length):
        """Word-level predicted tags per sentence (a sentence longer than
        `max_length` tokens in consecutive windows), as IOB2, read as the
        data's own tags are read (`read_conll`): an `I-X` after `O` or
        after another type starts an entity, as conlleval (CoNLL's own
        scorer), seqeval's default mode and transformers' `run_ner` read
        it; a model tagging in BIOES or IO (trained elsewhere) has its tags
        read by that scheme. (Until 2026-12-07 a B-/I- model's predictions
        were read strictly, such an `I-` starting nothing, while the gold
        tags were read leniently: a checkpoint trained on IOB1 tags, which
        opens most entities with `I-`, scored near 0 on its own data.)"""
        from bertdesk.data.ner import tag_words, to_bio

        return [to_bio(tags) for tags, _ in tag_words(model, tokenizer, data.words,
                                                       head["labels"], max_length)]

    def metrics(self, scores, data, head):
        from bertdesk.data.ner import entity_metrics

        return entity_metrics(data.tags, scores)

    def rows(self, scores, data, head):
        from bertdesk.data.ner import entities

        rows = []
        golds = data.tags if data.tags is not None else [None] * len(data.words)
        for words, gold, pred, line in zip(data.words, golds, scores, data.lines):
            ents = [f"{kind}:{' '.join(words[s:e])}" for kind, s, e in entities(pred)]
            row = {"line": line, "words": " ".join(words)}
            if gold is not None:
                row["gold"] = " ".join(gold)
            row.update({"prediction": " ".join(pred), "entities": "; ".join(ents)})
            if gold is not None:
                row["correct"] = gold == pred
            rows.append(row)
        return rows

    def describe(self, train, validation, head):
        return (f"data: {len(train.words)} training, {len(validation.words)} validation "
                f"sentences; tags: {head['labels']}")


class QaTask:
    """Extractive QA on SQuAD v1.1 / v2.0 JSON: windows over long contexts,
    start/end logits, n-best decoding, the official EM/F1 (percent)."""

    name = "qa"

    def load(self, path, options, require_labels=True):
        from bertdesk.data.squad import read_squad

        return read_squad(path, require_answers=require_labels)

    def split(self, data, fraction, seed):
        """Hold out whole articles, so no context is in both parts, about
        `fraction` of the questions: articles in a random order, each taken
        while the questions held stay within the fraction (the smallest
        article where none fits). A fraction of the articles held out 200 of
        240 questions where one article had 200."""
        from bertdesk.data.squad import QAData

        titles = sorted({ex.title for ex in data.examples})
        rng = np.random.default_rng(seed)
        rng.shuffle(titles)
        if len(titles) >= 2:
            size = {title: 0 for title in titles}
            for ex in data.examples:
                size[ex.title] += 1
            target = max(1, int(round(len(data.examples) * fraction)))
            held, count = set(), 0
            for title in titles:
                if count + size[title] <= target:
                    held.add(title)
                    count += size[title]
            if not held:
                held = {min(titles, key=lambda title: size[title])}  # first of the smallest
            pick = [ex.title in held for ex in data.examples]
        else:  # one article: split by question
            order = rng.permutation(len(data.examples))
            held_idx = set(order[: max(1, int(round(len(order) * fraction)))].tolist())
            pick = [i in held_idx for i in range(len(data.examples))]
        return (QAData([ex for ex, p in zip(data.examples, pick) if not p], data.source,
                       data.version),
                QAData([ex for ex, p in zip(data.examples, pick) if p], data.source,
                       data.version))

    def make_head(self, train, config):
        v2 = train.version.lower().lstrip("v").startswith("2") or any(
            ex.is_impossible for ex in train.examples)
        if not v2 and _given_threshold(config) is not None:
            raise DataError(f"{train.source}: --null-threshold is for SQuAD v2 data, with "
                            "unanswerable questions; this file has none (SQuAD v1.1)")
        head = {"problem_type": "extractive_qa", "num_classes": 2, "labels": None,
                "version": "2.0" if v2 else "1.1", "null_threshold": None,
                "doc_stride": config.doc_stride, "max_answer_length": config.max_answer_length}
        if v2:
            given = _given_threshold(config)
            head["null_threshold"] = 0.0 if given is None else given
            head["null_threshold_from"] = "validation" if given is None else "given"
        return head

    def calibrate(self, scores, data, head):
        """SQuAD v2 with `--null-threshold auto`: the null threshold that
        gives the best F1 on `data` (the validation set) goes into `head`,
        and the answers are decided again at it. A validation set without
        both answerable and unanswerable questions has nothing to tune on:
        the threshold stays (0.0, the reference's default)."""
        from bertdesk.data.qa import tune_null_threshold

        if head.get("null_threshold_from") != "validation" or not _both_kinds(data):
            return scores
        head["null_threshold"], _ = tune_null_threshold(data.examples, scores.found)
        return Answers(data.examples, scores.found, head["null_threshold"])

    def targets(self, data, head):
        return None  # answers were checked against their contexts when read

    def _windows(self, tokenizer, data, head, max_length):
        from bertdesk.data.qa import make_windows

        stride = min(head["doc_stride"], max_length // 2)
        return make_windows(tokenizer, data.examples, max_length=max_length, doc_stride=stride)

    def dataset(self, tokenizer, data, head, config, train=False):
        from bertdesk.data.batching import PaddedBatches

        windows = self._windows(tokenizer, data, head, config.max_length)
        targets = np.array([[w.start, w.end] for w in windows], np.int32) if train else None
        return PaddedBatches([(w.token_ids, w.segment_ids) for w in windows], targets,
                             batch_size=config.batch_size, shuffle=train, seed=config.seed,
                             bucket=bool(config.bucket),
                             fixed_length=None if (config.dynamic_padding or not train)
                             else config.max_length,
                             pad_to_multiple=config.pad_to_multiple,
                             max_shapes=config.max_shapes,
                             bucket_batches=config.bucket_batches)

    def build_model(self, backbone, head):
        from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer

        backbone.pooler.trainable = False  # unused by a span head (no gradient)
        return BertQuestionAnswerer(backbone)

    def loss(self, head):
        from bertdesk.tasks.bert_question_answerer import SpanLoss

        return SpanLoss()

    def monitor(self, head):
        return "f1"

    def scores(self, model, tokenizer, data, head, max_length):
        """{question id: answer text} (`Answers`, at the head's threshold)."""
        from bertdesk.data.batching import predict_encodings
        from bertdesk.data.qa import best_spans

        windows = self._windows(tokenizer, data, head, max_length)
        logits = predict_encodings(model, [(w.token_ids, w.segment_ids) for w in windows])
        found = best_spans(data.examples, windows, [lg[:, 0] for lg in logits],
                           [lg[:, 1] for lg in logits],
                           max_answer_length=head["max_answer_length"])
        return Answers(data.examples, found, head.get("null_threshold"))

    def metrics(self, scores, data, head):
        """The official SQuAD scores; on data with unanswerable questions
        also the official script's `best_exact`/`best_f1` and the null
        thresholds that reach them (`*_thresh`, in `--null-threshold`'s
        units: how far the null answer's logits may beat the best span's),
        and the threshold the answers were decided at (`null_threshold`,
        None: no null answers)."""
        from bertdesk.data.qa import tune_null_threshold
        from bertdesk.data.squad import squad_metrics

        out = squad_metrics(scores, data)
        found = getattr(scores, "found", None)
        if found is None:
            return out
        impossible = any(ex.is_impossible for ex in data.examples)
        if impossible or head.get("version") == "2.0":
            out["null_threshold"] = scores.null_threshold
        if impossible:
            for name, metric in (("exact", "exact_match"), ("f1", "f1")):
                thresh, best = tune_null_threshold(data.examples, found, metric)
                out[f"best_{name}"], out[f"best_{name}_thresh"] = best, thresh
        return out

    def rows(self, scores, data, head):
        from bertdesk.data.squad import answer_scores, scored_as_v1

        v1 = scored_as_v1(data)  # (scored as `metrics` scores them)
        found = getattr(scores, "found", None) or [None] * len(data.examples)
        rows = []
        for ex, decoded in zip(data.examples, found):
            pred = scores.get(ex.id, "")
            # where the answer starts in the context, as SQuAD's answer_start (the
            # text alone may occur earlier: the app highlighted the first one)
            spans = decoded["spans"] if decoded else []
            start = spans[0]["start"] if pred and spans and spans[0]["answer"] == pred else None
            if not ex.answers and not ex.is_impossible:  # no gold (predict on questions
                # alone): nothing to score, as classification leaves them (was EM 0, wrong)
                rows.append({"id": ex.id, "question": ex.question, "prediction": pred,
                             "start": start, "gold": None, "exact_match": None, "f1": None,
                             "correct": None})
                continue
            em, f1 = answer_scores(pred, ex, v1)
            rows.append({"id": ex.id, "question": ex.question, "prediction": pred,
                         "start": start, "gold": " | ".join(a["text"] for a in ex.answers),
                         "exact_match": em, "f1": f1, "correct": em == 1.0})
        return rows

    def describe(self, train, validation, head):
        text = (f"data: {len(train)} training, {len(validation)} validation questions "
                f"(SQuAD v{head['version']})")
        source = head.get("null_threshold_from")
        if source == "validation" and _both_kinds(validation):
            text += "; null threshold: the best on the validation set, after every epoch"
        elif source == "validation":
            kind = "answerable" if any(ex.is_impossible for ex in validation.examples) else \
                "unanswerable"
            text += (f"; null threshold {head['null_threshold']:g}: the validation set has no "
                     f"{kind} questions to tune it on (give --null-threshold, or a validation "
                     "set with both kinds)")
        elif source == "given":
            text += f"; null threshold {head['null_threshold']:g} (given)"
        return text


class Answers(dict):
    """QA scores: {question id: answer text ("" for none)} decided at
    `null_threshold`, with `found`: each example's decoding (`best_spans`,
    in data order), from which other thresholds are tried."""

    def __init__(self, examples, found, null_threshold):
        from bertdesk.data.qa import answers_at

        super().__init__(zip((ex.id for ex in examples), answers_at(found, null_threshold)))
        self.found = found
        self.null_threshold = null_threshold


def _given_threshold(config):
    """`--null-threshold` as a number, or None for "auto" (tuned on the
    validation set)."""
    value = getattr(config, "null_threshold", "auto")
    if isinstance(value, str) and value == "auto":
        return None
    try:
        number = None if isinstance(value, (str, bool)) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not np.isfinite(number):
        raise DataError(f"--null-threshold: expected auto or a finite number, got {value!r}")
    return number


def _both_kinds(data):
    """Whether `data` holds answerable and unanswerable questions."""
    return {ex.is_impossible for ex in data.examples} == {True, False}


TASKS = {"classify": ClassifyTask(), "ner": NerTask(), "qa": QaTask()}


def get_task(name):
    if name not in TASKS:
        raise DataError(f"task {name!r} is not available; expected one of {sorted(TASKS)}")
    return TASKS[name]


def data_size(data):
    return len(data.words) if hasattr(data, "words") else len(data)
