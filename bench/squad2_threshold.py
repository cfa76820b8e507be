"""SQuAD 2.0 null answers: the null threshold tuned on validation data
against the fixed 0.0 (the reference's and transformers' default).

There is no SQuAD 2.0 file in ../shared/data, so this builds a 2.0-style set
from `squad/squad_v1.1.part_a.json`: next to its own questions, every
paragraph gets questions asked of other paragraphs of the same article
whose gold answers it does not contain (same topic, no answer; SQuAD 2.0's
crowd-written unanswerable questions are harder: they were written to look
answerable). Whole articles go to three parts: training, validation (where
`--null-threshold auto` tunes) and test (never seen until the end).

The bundled MiniLM is fine-tuned once; the test part is then scored with
the same model at the threshold tuned on validation, at 0.0, and at the
threshold that would have been best on the test part itself (an upper
bound no method can use).

    KERAS_BACKEND=torch .venv/bin/python bench/squad2_threshold.py
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "squad" / "squad_v1.1.part_a.json"


def with_unanswerable(articles, ratio, rng):
    """Each paragraph also asked `ratio` x its own number of questions from
    the article's other paragraphs, none of whose gold answers it holds."""
    for a, article in enumerate(articles):
        paragraphs = article["paragraphs"]
        for p, para in enumerate(paragraphs):
            context = para["context"].lower()
            pool = [q for o, other in enumerate(paragraphs) if o != p
                    for q in other["qas"] if not q.get("is_impossible") and
                    not any(ans["text"].lower() in context for ans in q["answers"])]
            take = min(len(pool), int(round(ratio * len(para["qas"]))))
            for k in rng.choice(len(pool), size=take, replace=False):
                q = pool[k]
                para["qas"].append({"id": f"{q['id']}-no-{a}-{p}", "question": q["question"],
                                    "answers": [], "is_impossible": True})
    return articles


def split(n_train, n_validation, n_test, ratio, seed, dst):
    """Whole articles: training from the front, test from the back,
    validation just before the test part; written as SQuAD 2.0 files."""
    articles = json.loads(DATA.read_text(encoding="utf-8"))["data"]
    count = lambda a: sum(len(p["qas"]) for p in a["paragraphs"])  # noqa: E731
    parts, end = {}, len(articles)
    for name, want in (("test", n_test), ("validation", n_validation)):
        taken, total = [], 0
        while total < want:
            end -= 1
            taken.insert(0, articles[end])
            total += count(articles[end])
        parts[name] = taken
    train, total = [], 0
    for article in articles[:end]:
        if total >= n_train:
            break
        train.append(article)
        total += count(article)
    parts["train"] = train
    rng = np.random.default_rng(seed)
    paths = {}
    for name in ("train", "validation", "test"):
        paths[name] = dst / f"{name}.json"
        paths[name].write_text(json.dumps({"version": "v2.0", "data": with_unanswerable(
            parts[name], ratio, rng)}), encoding="utf-8")
    return paths


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", type=int, default=1100, help="answerable questions (whole articles)")
    p.add_argument("--validation", type=int, default=400)
    p.add_argument("--test", type=int, default=800)
    p.add_argument("--unanswerable", type=float, default=0.5,
                   help="unanswerable questions added per answerable one")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--doc-stride", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import keras

    from bertdesk.data.qa import tune_null_threshold
    from bertdesk.data.squad import read_squad
    from bertdesk.tasks.saving import load_model
    from bertdesk.training.finetune import FinetuneConfig, run_finetune
    from bertdesk.training.tasks import Answers, get_task

    tmp = Path(tempfile.mkdtemp(prefix="bench_squad2_"))
    paths = split(args.train, args.validation, args.test, args.unanswerable, args.seed, tmp)
    sizes = {k: read_squad(v) for k, v in paths.items()}
    desc = ", ".join(f"{k} {len(d)} ({sum(e.is_impossible for e in d.examples)} unanswerable)"
                     for k, d in sizes.items())
    print(f"SQuAD v1.1 part_a made 2.0-style: {desc}; {args.epochs} epoch(s), batch "
          f"{args.batch_size}, lr {args.lr}, max length {args.max_length}, stride "
          f"{args.doc_stride}, {keras.backend.backend()}", flush=True)
    start = time.perf_counter()
    result = run_finetune(FinetuneConfig(
        task="qa", format="squad", train=str(paths["train"]),
        validation=str(paths["validation"]), output=str(tmp / "run"), model="bundled",
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        max_length=args.max_length, doc_stride=args.doc_stride, seed=args.seed))
    print(f"fine-tuned in {time.perf_counter() - start:.0f} s; validation (where the "
          f"threshold was tuned): F1 {result['metrics']['f1']:.2f} at "
          f"{result['metrics']['null_threshold']:+.3f}", flush=True)

    model = load_model(result["model"])
    task, test = get_task("qa"), sizes["test"]
    found = task.scores(model.model, model.tokenizer, test, model.head, model.max_length).found
    oracle, _ = tune_null_threshold(test.examples, found)
    rows = [("tuned on validation (auto)", model.head["null_threshold"]), ("0.0", 0.0),
            ("none (always a span)", None), ("best on test itself", oracle)]
    print(f"{'test, null threshold':<30} {'EM':>6} {'F1':>6} {'HasAns F1':>10} "
          f"{'NoAns F1':>9}")
    for name, t in rows:
        m = task.metrics(Answers(test.examples, found, t), test, model.head)
        print(f"{name + ('' if t is None else f' {t:+.3f}'):<30} {m['exact_match']:6.2f} "
              f"{m['f1']:6.2f} {m['HasAns_f1']:10.2f} {m['NoAns_f1']:9.2f}")


if __name__ == "__main__":
    main()
