"""Tokenizer throughput: bertdesk.BertTokenizer vs transformers' BertTokenizerFast,
same vocabulary, same 100k SST-2 sentences (../shared/data), same process.

    .venv/bin/python bench/tokenizer_speed.py [--n 100000]
"""

import argparse
import csv
import time
from pathlib import Path

import bertdesk


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/sst2/train.tsv"))
    args = parser.parse_args()
    with open(args.data, encoding="utf-8") as f:
        rows = [r[0] for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]
    texts = (rows * (args.n // len(rows) + 1))[: args.n]
    vocab = Path(bertdesk.bundled_checkpoint()) / "vocab.txt"

    from transformers import BertTokenizerFast

    ours = bertdesk.BertTokenizer(vocab)
    ref = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    results = {}
    for name, fn in [
        ("bertdesk", lambda: ours(texts, max_length=128)),
        ("transformers", lambda: ref(texts, max_length=128, truncation=True,
                                     padding="max_length", return_tensors="np")),
    ]:
        fn()  # warm-up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        results[name] = sorted(times)[1]
    for name, t in results.items():
        print(f"{name:<13} {args.n:,} sentences in {t:.2f}s ({args.n / t:,.0f}/s)")
    print(f"ratio bertdesk/transformers speed: {results['transformers'] / results['bertdesk']:.2f}x")


if __name__ == "__main__":
    main()
