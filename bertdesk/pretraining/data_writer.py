"""`create_pretraining_data`: raw text -> sharded masked-LM/NSP instances.

The corpus is checked and cut into chunks at document boundaries
(`corpus.plan_chunks`); each chunk becomes one shard, made by its own worker
process with its own random generator (seeded by the run seed and the shard
number), so the output is the same for a given seed whatever the number of
workers, and no worker holds more than its chunk. As in google-research/bert,
a random-next second segment comes from another document *of the same
shard* (chunks are tens of MB, thousands of documents).

A shard is a folder of `.npy` arrays (memory-mapped when read), written
under a temporary name and renamed when complete; `data.json`, written last
and atomically, lists the finished shards. Layout of one shard of `n`
instances at sequence length `L` with `P` predictions:

    token_ids      (n, L)  uint16/int32, 0-padded ([MASK]ed when static)
    lengths        (n,)    int32   tokens including [CLS] and the two [SEP]
    a_lengths      (n,)    int32   tokens of "[CLS] A [SEP]" (segment 0)
    next_sentence  (n,)    int8    1 = B is a random other text
    static masking:  mask_positions (n, P) int32, mask_labels (n, P) int32 (-1 pad)
    dynamic masking: continuation (n, L) bool (whole-word masking only)
"""

import hashlib
import json
import os
import random
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bertdesk.data.tables import DataError
from bertdesk.io.atomic import atomic_write_text
from bertdesk.pretraining.corpus import compile_document_pattern, plan_chunks, read_chunk
from bertdesk.pretraining.instances import (Segment, create_instances_from_document, mask_tokens,
                                            pack_pair, replacement_ids)

FORMAT = "bertdesk-pretraining-data"


@dataclass
class DataOptions:
    """How instances are made (google-research/bert's flags and defaults,
    plus the masking mode and the corpus format)."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 10
    # dupe_factor passes over the corpus, each with its own A/B cuts and random-next pairs;
    # "static": each pass masked once here; "dynamic": masked anew every epoch when read
    masking: str = "static"
    whole_word_mask: bool = False
    chinese_words: bool = False  # space-separated CJK words count as words for whole-word masking
    seed: int = 12345
    sentences: str = "split"  # "split" lines into sentences, or one sentence per "line"
    document_pattern: str | None = None
    chunk_bytes: int = 32 << 20

    @classmethod
    def of(cls, settings):
        """The options a `PretrainConfig` or the command line's arguments
        (`seq_length`, `masked_lm_prob`, ...) make the data with."""
        return cls(
            max_seq_length=settings.seq_length,
            max_predictions_per_seq=settings.max_predictions_per_seq,
            masked_lm_prob=settings.masked_lm_prob, short_seq_prob=settings.short_seq_prob,
            dupe_factor=settings.dupe_factor, masking=settings.masking,
            whole_word_mask=settings.whole_word_mask, chinese_words=settings.chinese_words,
            seed=settings.seed, sentences=settings.sentences,
            document_pattern=settings.document_pattern)

    def check(self):
        from bertdesk.data import settings

        settings.whole(self, "max_seq_length", 8, option="--seq-length")
        settings.whole(self, "max_predictions_per_seq")
        settings.whole(self, "dupe_factor")
        settings.number(self, "masked_lm_prob", 0, 1, low_open=True, high_open=True)
        settings.number(self, "short_seq_prob", 0, 1)
        if self.masking not in ("static", "dynamic"):
            raise DataError(f"masking must be 'static' or 'dynamic', got {self.masking!r}")
        compile_document_pattern(self.document_pattern)


def _is_cjk(token):
    if len(token) != 1:
        return False
    cp = ord(token)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def tokenize_documents(tokenizer, documents, chinese_words=False):
    """Documents of sentence strings -> documents of `Segment`s (empty
    sentences dropped). A piece continues a word when it starts with `##`,
    or, with `chinese_words`, when it is a CJK character written right after
    another (words separated by spaces)."""
    flat = [s for d in documents for s in d]
    encodings = tokenizer._tokenizer.encode_batch(flat, add_special_tokens=False)
    out, k = [], 0
    for d in documents:
        doc = []
        for _ in d:
            e = encodings[k]
            k += 1
            if not e.ids:
                continue
            cont = [t.startswith("##") for t in e.tokens]
            if chinese_words:
                for j in range(1, len(e.tokens)):
                    if (_is_cjk(e.tokens[j]) and _is_cjk(e.tokens[j - 1])
                            and e.offsets[j][0] == e.offsets[j - 1][1]):
                        cont[j] = True
            doc.append(Segment(e.ids, cont))
        if doc:
            out.append(doc)
    return out


def build_instances(documents, tokenizer, options, rng, others=None):
    """All instances of one shard, shuffled: a list of dicts with `ids`,
    `cont`, `a_length`, `next_sentence` and, when static, `positions`,
    `labels`. `documents` are lists of `Segment`s; they get shuffled.
    `others`: documents from elsewhere to draw random next sentences from
    (see `create_instances_from_document`)."""
    rng.shuffle(documents)
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    replacement = replacement_ids(tokenizer.vocabulary)
    static = options.masking == "static"
    instances = []
    for _ in range(options.dupe_factor):
        for index in range(len(documents)):
            for a, b, is_random in create_instances_from_document(
                    documents, index, options.max_seq_length, options.short_seq_prob, rng,
                    others):
                ids, cont, a_length = pack_pair(a, b, tokenizer.cls_token_id,
                                                tokenizer.sep_token_id)
                inst = {"ids": ids, "cont": cont, "a_length": a_length,
                        "next_sentence": int(is_random)}
                if static:
                    inst["ids"], inst["positions"], inst["labels"] = mask_tokens(
                        ids, cont, options.masked_lm_prob, options.max_predictions_per_seq,
                        options.whole_word_mask, replacement, tokenizer.mask_token_id,
                        special, rng)
                instances.append(inst)
    rng.shuffle(instances)
    return instances


def _arrays(instances, options, vocab_size):
    n, length, p = len(instances), options.max_seq_length, options.max_predictions_per_seq
    id_dtype = np.uint16 if vocab_size <= 65535 else np.int32
    arrays = {"token_ids": np.zeros((n, length), id_dtype),
              "lengths": np.zeros(n, np.int32), "a_lengths": np.zeros(n, np.int32),
              "next_sentence": np.zeros(n, np.int8)}
    static = options.masking == "static"
    if static:
        arrays["mask_positions"] = np.zeros((n, p), np.int32)
        arrays["mask_labels"] = np.full((n, p), -1, np.int32)
    elif options.whole_word_mask:
        arrays["continuation"] = np.zeros((n, length), bool)
    for i, inst in enumerate(instances):
        k = len(inst["ids"])
        arrays["token_ids"][i, :k] = inst["ids"]
        arrays["lengths"][i] = k
        arrays["a_lengths"][i] = inst["a_length"]
        arrays["next_sentence"][i] = inst["next_sentence"]
        if static:
            m = len(inst["positions"])
            arrays["mask_positions"][i, :m] = inst["positions"]
            arrays["mask_labels"][i, :m] = inst["labels"]
        elif options.whole_word_mask:
            arrays["continuation"][i, :k] = inst["cont"]
    return arrays


def corpus_tokenizer(folder):
    """The `BertTokenizer` saved in `folder`, reading corpus text as
    google-research/bert's `FullTokenizer` does: a special token's name in
    the text (`[SEP]`, `[MASK]`) is text, split into `[`, `sep`, `]`, not
    the token itself (which would enter a sentence unmasked, or as a mask
    with no label)."""
    from bertdesk.tokenizer import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(folder)
    tokenizer._tokenizer.encode_special_tokens = True
    return tokenizer


def make_shard(index, chunk, options, out_dir, neighbour=None):
    """Build shard `index` from `chunk` into `out_dir/shard-<index>` with the
    tokenizer saved in `out_dir` (all its settings: casing, accents, CJK);
    returns its statistics. Runs in a worker process. A chunk of a single
    document (a file that is one document) draws its random next sentences
    from the `neighbour` chunk's documents: its own would make the "random"
    B its own document's."""
    tokenizer = corpus_tokenizer(out_dir)

    def documents_of(part):
        return tokenize_documents(
            tokenizer, read_chunk(part, options.document_pattern, options.sentences),
            options.chinese_words)

    documents = documents_of(chunk)
    others = documents_of(neighbour) if len(documents) == 1 and neighbour is not None else None
    rng = random.Random(f"{options.seed}/{index}")
    stats = {"documents": len(documents),
             "one_sentence_documents": sum(len(d) == 1 for d in documents),
             "sentences": sum(len(d) for d in documents),
             "tokens": sum(len(s) for d in documents for s in d)}
    instances = build_instances(documents, tokenizer, options, rng, others) if documents else []
    arrays = _arrays(instances, options, tokenizer.vocabulary_size)
    name = f"shard-{index:05d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        for key, value in arrays.items():
            np.save(staging / f"{key}.npy", value)
        final = Path(out_dir) / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return {"name": name, "instances": len(instances),
            "random_next": int(arrays["next_sentence"].sum()), **stats}


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def create_pretraining_data(corpus, tokenizer, output, options=None, workers=1, log=None):
    """Write masked-LM/NSP instances for the `corpus` files into the folder
    `output` (sharded, see the module doc); returns the manifest dict.

    `tokenizer` is a `BertTokenizer` (its vocabulary is copied into the
    folder). Re-running with the same arguments gives the same files.
    """
    options = options or DataOptions()
    options.check()
    log = log or (lambda text: None)
    corpus = [corpus] if isinstance(corpus, (str, Path)) else list(corpus)
    if tokenizer.mask_token_id is None:
        raise DataError("the vocabulary has no [MASK] token; masked-LM pretraining needs one")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise DataError(f"{output}: exists and is not an empty folder")
    chunks = plan_chunks(corpus, options.chunk_bytes, options.document_pattern)
    # written into a hidden staging folder beside `output` and renamed into
    # place whole: `output` never holds part of a data set (a run's
    # `--resume` tells its own data folder by its data.json)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial",
                                    dir=output.parent))
    try:
        manifest = _write_data(corpus, tokenizer, chunks, staging, options, workers, log)
        if output.exists():
            output.rmdir()  # empty (checked above)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    totals = manifest["totals"]
    log(f"{totals['instances']:,} instances from {totals['documents']:,} documents, "
        f"{totals['sentences']:,} sentences, {totals['tokens']:,} tokens; "
        f"{totals['random_next'] / totals['instances']:.1%} random next")
    return manifest


def _write_data(corpus, tokenizer, chunks, output, options, workers, log):
    """The shards, vocabulary and manifest of `create_pretraining_data`,
    written into the folder `output`; returns the manifest."""
    tokenizer.save(output)
    vocab_file = output / "vocab.txt"
    log(f"{len(chunks)} shard(s) from {len(set(c.path for c in chunks))} file(s), "
        f"{workers} worker(s)")
    jobs = [(i, c, options, str(output), chunks[(i + 1) % len(chunks)] if len(chunks) > 1
             else None) for i, c in enumerate(chunks)]
    if workers > 1 and len(chunks) > 1:
        # spawn, not fork: the parent may hold JAX/PyTorch threads
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            shards = list(pool.map(make_shard, *zip(*jobs)))
    else:
        shards = [make_shard(*job) for job in jobs]
    names = ", ".join(map(str, corpus))
    totals = {k: sum(s[k] for s in shards)
              for k in ("instances", "random_next", "documents", "one_sentence_documents",
                        "sentences", "tokens")}
    if totals["instances"] == 0:
        raise DataError(f"{names}: no training instances could be made "
                        "(no sentences found)")
    if totals["one_sentence_documents"] == totals["documents"]:
        raise DataError(
            f"{names}: every document has a single sentence, so "
            "next-sentence prediction has no real next sentence to learn from; separate "
            "documents with blank lines and keep several sentences in each (or use "
            "--document-pattern for a corpus marked by headings)")
    if totals["documents"] == 1:
        log(f"{names}: the corpus is one document, so a \"random\" next "
            "sentence comes from that same document (as in google-research/bert) and "
            "next-sentence prediction learns little; separate documents with blank lines "
            "(or use --document-pattern)")
    manifest = {"format": FORMAT, "version": 1, "options": asdict(options),
                "vocab_size": tokenizer.vocabulary_size, "vocab_sha256": _sha256(vocab_file),
                "lowercase": tokenizer.lowercase,
                "corpus": [str(p) for p in corpus],
                "shards": shards, "totals": totals}
    atomic_write_text(output / "data.json", json.dumps(manifest, indent=2))
    return manifest
