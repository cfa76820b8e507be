"""Prediction on raw text: bertdesk's `Predictor` against transformers'
pipelines on the same model, the same inputs, in one process.

The model is the bundled all-MiniLM-L6-v2 with a task head (random weights:
speed does not depend on them), saved by bertdesk and exported with
`bertdesk convert --to hf`, which transformers' pipelines load as they are.
Inputs are real text from ../shared/data: SST-2 sentences (classification),
CoNLL-2003 sentences joined into text (NER), SQuAD questions with their
paragraphs (QA). Rounds alternate the two implementations; medians are
printed with the agreement of their answers.

    KERAS_BACKEND=torch .venv/bin/python bench/predict_speed.py --tasks classify,ner,qa
"""

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
NER_LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


# === Inputs ===
def sst2(n):
    with open(DATA / "sst2" / "train.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [text.strip() for text, _ in rows if text.strip()][:n]


def conll(n):
    sentences, words = [], []
    for line in (DATA / "conll2003" / "eng.testa").read_text(encoding="utf-8").split("\n"):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                sentences.append(" ".join(words))
            words = []
            continue
        words.append(parts[0])
    return sentences[:n]


def squad(n):
    data = json.loads((DATA / "squad" / "squad_v1.1.part_a.json").read_text(encoding="utf-8"))
    pairs = [(qa["question"], p["context"]) for a in data["data"] for p in a["paragraphs"]
             for qa in p["qas"]]
    return pairs[:n]


# === Models ===
def build(task, folder, max_length):
    """A bertdesk task folder and its transformers export."""
    import keras

    import bertdesk
    from bertdesk.io import convert
    from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier
    from bertdesk.tasks.bert_token_classifier import BertTokenClassifier
    from bertdesk.tasks.saving import save_task_model

    keras.utils.set_random_seed(0)
    bundled = bertdesk.bundled_checkpoint()
    backbone = bertdesk.load_backbone(bundled)
    if task == "classify":
        model = BertTextClassifier(backbone, num_classes=2)
        head = {"problem_type": "single_label", "num_classes": 2,
                "labels": ["negative", "positive"]}
    elif task == "ner":
        model = BertTokenClassifier(backbone, num_classes=len(NER_LABELS))
        head = {"num_classes": len(NER_LABELS), "labels": NER_LABELS}
    else:
        model = BertQuestionAnswerer(backbone)
        head = {"problem_type": "extractive_qa", "num_classes": 2, "labels": None,
                "version": "1.1", "null_threshold": None, "doc_stride": 128,
                "max_answer_length": 30}
    # random heads put every class (span) within float noise of the others;
    # wider weights keep the comparison of the two answers from being a coin toss
    kernel = model.classifier.kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel) * 30)
    ours = folder / task
    save_task_model(model, ours, bertdesk.load_tokenizer(bundled), task, head,
                    {"max_length": max_length, "text_pair_column": None})
    theirs = folder / f"{task}-hf"
    convert(ours, theirs, to="hf")
    return ours, theirs


def runners(task, ours, theirs, inputs, batch_size, max_length, sorted_loop=False):
    """(bertdesk's call, transformers' call, agreement of their answers);
    `sorted_loop`: for classification, a plain loop over batches sorted by
    length instead of the pipeline."""
    from transformers import pipeline

    from bertdesk.predictor import Predictor

    predictor = Predictor.load(ours, batch_size=batch_size)
    if task == "classify":
        pipe = pipeline("text-classification", model=str(theirs), tokenizer=str(theirs),
                        device="cpu")
        mine = lambda: predictor.classify(inputs)  # noqa: E731
        other = lambda: pipe(inputs, batch_size=batch_size, truncation=True,  # noqa: E731
                             max_length=max_length)
        agree = lambda a, b: sum(x["label"] == y["label"] for x, y in zip(a, b)) / len(a)  # noqa: E731
        if sorted_loop:  # the fastest plain loop a careful user writes
            other = transformers_sorted(theirs, inputs, batch_size, max_length)
    elif task == "ner":
        pipe = pipeline("token-classification", model=str(theirs), tokenizer=str(theirs),
                        aggregation_strategy="first", device="cpu")
        mine = lambda: predictor.entities(inputs)  # noqa: E731
        other = lambda: pipe(inputs, batch_size=batch_size)  # noqa: E731

        def agree(a, b):
            same = [{(e["type"], e["start"], e["end"]) for e in x} ==
                    {(e["entity_group"], e["start"], e["end"]) for e in y} for x, y in zip(a, b)]
            return sum(same) / len(same)
    else:
        # transformers 5 removed its question-answering pipeline: the peer is
        # run_qa.py's inference (its tokenizer's windows, batched forward
        # passes padded to their longest, n-best post-processing)
        questions, contexts = [q for q, _ in inputs], [c for _, c in inputs]
        mine = lambda: predictor.answer(questions, contexts)  # noqa: E731
        other = transformers_qa(theirs, questions, contexts, batch_size, max_length)
        agree = lambda a, b: sum(x["answer"] == y  # noqa: E731
                                 for x, y in zip(a, b)) / len(a)
    return mine, other, agree


def transformers_sorted(folder, texts, batch_size, max_length):
    """Classification as a plain loop: tokenised at once, batches of similar
    length (sorted), padded to their longest, under `torch.inference_mode`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    labels = model.config.id2label

    def run():
        out = []
        for logits in sorted_logits(model, tok, texts, batch_size, max_length):
            probs = torch.from_numpy(logits).softmax(-1).numpy()
            out.append({"label": labels[int(probs.argmax())], "score": float(probs.max())})
        return out

    return run


def sorted_logits(model, tok, texts, batch_size, max_length):
    """A transformers sequence classifier's logits per text, in order:
    tokenised at once, run in batches of similar length (sorted), each
    padded to its longest, under `torch.inference_mode`."""
    import numpy as np
    import torch

    enc = tok(texts, truncation=True, max_length=max_length)
    order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
    out = [None] * len(texts)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            ix = order[s:s + batch_size]
            feats = [{k: enc[k][i] for k in ("input_ids", "token_type_ids", "attention_mask")}
                     for i in ix]
            logits = model(**tok.pad(feats, return_tensors="pt")).logits
            for i, row in zip(ix, logits.numpy()):
                out[i] = row
    return out


def transformers_qa(folder, questions, contexts, batch_size, max_length, doc_stride=128,
                    n_best=20, max_answer_length=30):
    """A call answering every question as run_qa.py's inference does."""
    import numpy as np
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForQuestionAnswering.from_pretrained(str(folder)).eval()

    def run():
        enc = tok([q.lstrip() for q in questions], contexts, truncation="only_second",
                  max_length=max_length, stride=doc_stride, return_overflowing_tokens=True,
                  return_offsets_mapping=True)
        best = {}
        with torch.no_grad():
            for s in range(0, len(enc["input_ids"]), batch_size):
                ix = list(range(s, min(s + batch_size, len(enc["input_ids"]))))
                feats = [{k: enc[k][i] for k in ("input_ids", "token_type_ids",
                                                 "attention_mask")} for i in ix]
                out = model(**tok.pad(feats, padding="longest", return_tensors="pt"))
                for row, i in enumerate(ix):
                    offsets, seq = enc["offset_mapping"][i], enc.sequence_ids(i)
                    # the window's own positions (the batch's padding is not
                    # a candidate: as bertdesk, and the pipeline transformers 4 had)
                    start_l = out.start_logits[row].numpy()[:len(seq)]
                    end_l = out.end_logits[row].numpy()[:len(seq)]
                    k = enc["overflow_to_sample_mapping"][i]
                    for a in np.argsort(start_l)[-1:-n_best - 1:-1]:
                        for b in np.argsort(end_l)[-1:-n_best - 1:-1]:
                            if a >= len(seq) or b >= len(seq) or seq[a] != 1 or seq[b] != 1:
                                continue
                            if b < a or b - a + 1 > max_answer_length:
                                continue
                            score = start_l[a] + end_l[b]
                            if score > best.get(k, (-np.inf, ""))[0]:
                                best[k] = (score, contexts[k][offsets[a][0]:offsets[b][1]])
        return [best.get(k, (0, ""))[1] for k in range(len(questions))]

    return run


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="classify,classify-sorted,ner,qa",
                   help="classify, ner and qa against transformers' pipelines (QA: "
                        "run_qa.py's inference); classify-sorted against a plain loop over "
                        "length-sorted batches")
    p.add_argument("--n", type=int, default=2000, help="examples (QA: questions) per task")
    p.add_argument("--n-qa", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import keras
    import torch

    print(f"backend {keras.backend.backend()}, torch threads {torch.get_num_threads()}, "
          f"batch {args.batch_size}, {args.rounds} rounds after one untimed (medians), "
          "bundled MiniLM")
    print(f"{'task':<15} {'examples':>8} {'bertdesk s':>11} {'transformers s':>15} "
          f"{'ratio':>6} {'agree':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            task = name.split("-")[0]  # classify-sorted: against the plain sorted loop
            max_length = 384 if task == "qa" else 128
            inputs = {"classify": sst2, "ner": conll, "qa": squad}[task](
                args.n_qa if task == "qa" else args.n)
            ours, theirs = build(task, Path(tmp) / name, max_length)  # a folder per row
            mine, other, agree = runners(task, ours, theirs, inputs, args.batch_size,
                                         max_length, sorted_loop=name.endswith("-sorted"))
            times = {"bertdesk": [], "transformers": []}
            for round_ in range(args.rounds + 1):  # the first warms up, untimed
                seconds, a = timed(mine)
                if round_:
                    times["bertdesk"].append(seconds)
                seconds, b = timed(other)
                if round_:
                    times["transformers"].append(seconds)
            ours_s = statistics.median(times["bertdesk"])
            theirs_s = statistics.median(times["transformers"])
            print(f"{name:<15} {len(inputs):>8} {ours_s:>11.2f} {theirs_s:>15.2f} "
                  f"{theirs_s / ours_s:>5.2f}x {agree(a, b):>6.1%}  "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in times['bertdesk'])} / "
                  f"{', '.join(f'{x:.2f}' for x in times['transformers'])})", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "torch")
    sys.exit(main())
