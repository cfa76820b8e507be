"""Pretraining: corpus reading, instance creation (masking, NSP, whole-word
masking), sharded streaming, the pretraining loop (losses, LAMB, exact
resume), the command line and data-parallel equivalence."""

import json
import os
import random
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bertdesk.data.tables import DataError
from bertdesk.pretraining.corpus import plan_chunks, read_chunk, split_sentences
from bertdesk.pretraining.data_writer import (DataOptions, build_instances,
                                              create_pretraining_data, tokenize_documents)
from bertdesk.pretraining.instances import mask_tokens, replacement_ids
from bertdesk.pretraining.pretraining_data import PretrainingData

ROOT = Path(__file__).resolve().parents[1]
STEMS = ["walk", "talk", "play", "read", "paint", "build", "listen", "garden", "travel", "cook",
         "climb", "sing", "teach", "learn", "clean", "visit", "watch", "write", "swim", "dance"]
SUFFIXES = ["", "s", "ed", "ing", "er", "ers"]
NAMES = ["Alice", "Bob", "Carol", "Dmitri", "Erin", "Farah", "Goran", "Hana"]


def write_corpus(path, documents=60, seed=0):
    """Documents of 2-8 sentences from a small grammar, blank-line separated."""
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        sentences = []
        for _ in range(rng.randint(2, 8)):
            words = [rng.choice(NAMES)] + [rng.choice(STEMS) + rng.choice(SUFFIXES)
                                           for _ in range(rng.randint(3, 9))]
            sentences.append(" ".join(words) + rng.choice([".", "!", "?"]))
        # two or three sentences per line, as paragraphs are written
        lines, i = [], 0
        while i < len(sentences):
            k = rng.randint(1, 3)
            lines.append(" ".join(sentences[i:i + k]))
            i += k
        docs.append("\n".join(lines))
    Path(path).write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return [write_corpus(folder / "a.txt", 60, 0), write_corpus(folder / "b.txt", 40, 1)]


@pytest.fixture(scope="module")
def tokenizer(corpus):
    from bertdesk.pretraining.vocab import train_vocabulary

    return train_vocabulary(corpus, vocab_size=150, min_frequency=1)


def _options(**kw):
    base = dict(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=2, seed=7)
    base.update(kw)
    return DataOptions(**base)


# === Corpus ===
@pytest.mark.backend_neutral
def test_sentences_and_documents(tmp_path):
    assert split_sentences("He left. She stayed! Why? 3 more.") == [
        "He left.", "She stayed!", "Why?", "3 more."]
    assert split_sentences("e.g. this stays whole") == ["e.g. this stays whole"]
    assert split_sentences("我爱北京。你呢？好") == ["我爱北京。", "你呢？", "好"]
    # a run of full stops ends one sentence (each "！" was a sentence of its own)
    assert split_sentences("太好了！！！非常满意。。下次？！") == ["太好了！！！", "非常满意。。", "下次？！"]
    assert split_sentences("他说：“好！”。下次") == ["他说：“好！”。", "下次"]
    path = tmp_path / "c.txt"
    path.write_bytes(b" = Title = \r\nOne. Two.\r\n\r\n\r\nThree.\r\n = Next = \r\nFour.\r\n")
    chunks = plan_chunks([path])
    assert read_chunk(chunks[0]) == [["= Title =", "One.", "Two."], ["Three.", "= Next =", "Four."]]
    assert read_chunk(chunks[0], document_pattern=r"^ = [^=].* = $") == [
        ["One.", "Two."], ["Three."], ["Four."]]
    assert read_chunk(chunks[0], sentences="line") == [["= Title =", "One. Two."],
                                                       ["Three.", "= Next =", "Four."]]


@pytest.mark.backend_neutral
def test_chunks_cut_at_document_boundaries(corpus):
    chunks = plan_chunks(corpus, chunk_bytes=2000)
    assert len(chunks) > 4
    whole = [d for path in corpus for d in read_chunk(plan_chunks([path], 1 << 30)[0])]
    pieces = [d for c in chunks for d in read_chunk(c)]
    assert pieces == whole  # no document cut or lost
    # a chunk's line numbers are the file's: a bad byte is reported on its real line
    lines = Path(corpus[0]).read_bytes().split(b"\n")
    first = chunks[1].first_line
    assert first > 1 and lines[first - 1] == b""  # the chunk starts at a blank line
    assert sum(len(line) + 1 for line in lines[:first - 1]) == chunks[1].start


@pytest.mark.backend_neutral
@pytest.mark.parametrize("content, message", [
    (b"", "no text (the file is empty or blank)"),
    (b"\n \n\n", "no text"),
    (b"ok line.\n\x00\x01\x02binary\n", "line 2: a NUL byte"),
    (b"fine.\nalso fine.\n\xff\xfe bad\n", "line 3: not UTF-8"),
])
def test_bad_corpus_files(tmp_path, tokenizer, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad.txt") as e:
        create_pretraining_data([path], tokenizer, tmp_path / "out", _options())
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written for a bad corpus
    with pytest.raises(DataError, match="missing.txt: corpus file not found"):
        plan_chunks([tmp_path / "missing.txt"])


@pytest.mark.backend_neutral
def test_files_of_one_document_each_draw_random_next_from_other_documents(tmp_path, tokenizer):
    """A file is a chunk, a chunk a shard, and B was drawn from the shard's
    own documents: where a file is one document, every "random next" B was
    its own document's. Each file here is one document whose sentences all
    start with one name, so the names tell which document a segment is from."""
    rng = random.Random(3)
    files = []
    for k, name in enumerate(NAMES[:3]):
        sentences = [" ".join([name] + [rng.choice(STEMS) for _ in range(rng.randint(3, 6))]) + "."
                     for _ in range(40)]
        files.append(tmp_path / f"doc{k}.txt")
        files[-1].write_text("\n".join(sentences) + "\n", encoding="utf-8")
    said = []
    create_pretraining_data(files, tokenizer, tmp_path / "d", _options(max_seq_length=48),
                            log=said.append)
    assert not any("one document" in line for line in said)
    names = {tokenizer.vocabulary.index(n.lower()) for n in NAMES[:3]}  # one piece each
    data = PretrainingData(tmp_path / "d", batch_size=1)
    counts = {0: 0, 1: 0}
    for i in range(data.num_instances):
        x, y = data.batch(i)
        ids, labels = x["token_ids"][0].copy(), y["mlm_logits"][0]
        ids[x["mask_positions"][0][labels >= 0]] = labels[labels >= 0]  # unmasked
        seg, real = x["segment_ids"][0], x["padding_mask"][0].astype(bool)
        a, b = ({int(t) for t in ids[part & real] if t in names}
                for part in (seg == 0, seg == 1))
        random_next = int(y["nsp_logits"][0])
        assert (a.isdisjoint(b) if random_next else a == b) or not (a and b), (i, a, b)
        counts[random_next] += bool(a and b)
    assert counts[0] > 10 and counts[1] > 10

    one = tmp_path / "one.txt"  # a corpus of one document: said, and named (a str path
    one.write_text(files[0].read_text(encoding="utf-8"), encoding="utf-8")  # was spelt out)
    said.clear()
    create_pretraining_data(str(one), tokenizer, tmp_path / "o", _options(), log=said.append)
    assert [line for line in said if "one document" in line] == [
        f"{one}: the corpus is one document, so a \"random\" next sentence comes from that same "
        "document (as in google-research/bert) and next-sentence prediction learns little; "
        "separate documents with blank lines (or use --document-pattern)"]


@pytest.mark.backend_neutral
def test_one_sentence_documents_are_refused(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("Alice walks.\n\nBob talks.\n\nCarol sings.\n", encoding="utf-8")
    with pytest.raises(DataError, match="short.txt: every document has a single sentence"):
        create_pretraining_data([path], tokenizer, tmp_path / "out", _options())
    with pytest.raises(DataError, match=r"^\S*short.txt: every document"):
        create_pretraining_data(str(path), tokenizer, tmp_path / "out", _options())


@pytest.mark.backend_neutral
def test_a_data_folder_appears_whole_or_not_at_all(tmp_path, corpus, tokenizer):
    # a failure after the shards were written leaves neither the folder nor
    # its staging (a run's --resume takes a data/ with data.json as its own)
    bad = tmp_path / "short.txt"
    bad.write_text("Alice walks.\n\nBob talks.\n", encoding="utf-8")
    with pytest.raises(DataError, match="every document has a single sentence"):
        create_pretraining_data([bad], tokenizer, tmp_path / "out", _options())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]
    (tmp_path / "out").mkdir()  # an empty folder is taken
    manifest = create_pretraining_data(corpus, tokenizer, tmp_path / "out", _options())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "short.txt"]
    assert {"data.json", "vocab.txt"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert PretrainingData(tmp_path / "out", batch_size=4).num_instances == (
        manifest["totals"]["instances"])
    with pytest.raises(DataError, match="out: exists and is not an empty folder"):
        create_pretraining_data(corpus, tokenizer, tmp_path / "out", _options())


@pytest.mark.backend_neutral
def test_data_read_with_another_vocabulary_is_refused(tmp_path, corpus, tokenizer):
    folder = tmp_path / "data"
    create_pretraining_data(corpus, tokenizer, folder, _options())
    vocab = folder / "vocab.txt"
    original = vocab.read_bytes()
    words = original.decode().splitlines()
    words[-2], words[-1] = words[-1], words[-2]  # two ids swapped: same size, other words
    vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"vocab.txt: not the vocabulary the data was written "
                                        r"with .*vocab_sha256"):
        PretrainingData(folder, batch_size=4)
    vocab.unlink()
    with pytest.raises(DataError, match="vocab.txt: missing"):
        PretrainingData(folder, batch_size=4)
    vocab.write_bytes(original)
    assert PretrainingData(folder, batch_size=4).num_instances > 0
    (folder / "data.json").write_text('{"format": ', encoding="utf-8")
    with pytest.raises(DataError, match="data.json: not readable JSON"):
        PretrainingData(folder, batch_size=4)


def _reference_instances(documents, options, vocab_words, cls, sep, mask, rng):
    """google-research/bert's `create_training_instances` loop (create_
    pretraining_data.py, whole-word masking off), ported line by line onto
    token ids, with the declared difference (`vocab_words`: the random
    replacement's ids). The masking runs inside the document loop."""
    def truncate_seq_pair(tokens_a, tokens_b, max_num_tokens):
        while True:
            if len(tokens_a) + len(tokens_b) <= max_num_tokens:
                break
            trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
            if rng.random() < 0.5:
                del trunc_tokens[0]
            else:
                trunc_tokens.pop()

    def create_masked_lm_predictions(tokens):
        cand_indexes = [[i] for i, token in enumerate(tokens) if token not in (cls, sep)]
        rng.shuffle(cand_indexes)
        output_tokens = list(tokens)
        num_to_predict = min(options.max_predictions_per_seq,
                             max(1, int(round(len(tokens) * options.masked_lm_prob))))
        masked_lms, covered_indexes = [], set()
        for index_set in cand_indexes:
            if len(masked_lms) >= num_to_predict:
                break
            if len(masked_lms) + len(index_set) > num_to_predict:
                continue
            if any(index in covered_indexes for index in index_set):
                continue
            for index in index_set:
                covered_indexes.add(index)
                if rng.random() < 0.8:
                    masked_token = mask
                elif rng.random() < 0.5:
                    masked_token = tokens[index]
                else:
                    masked_token = vocab_words[rng.randint(0, len(vocab_words) - 1)]
                output_tokens[index] = masked_token
                masked_lms.append((index, tokens[index]))
        masked_lms.sort()
        return output_tokens, [i for i, _ in masked_lms], [t for _, t in masked_lms]

    def create_instances_from_document(all_documents, document_index):
        document = all_documents[document_index]
        max_num_tokens = options.max_seq_length - 3
        target_seq_length = max_num_tokens
        if rng.random() < options.short_seq_prob:
            target_seq_length = rng.randint(2, max_num_tokens)
        instances, current_chunk, current_length, i = [], [], 0, 0
        while i < len(document):
            segment = document[i]
            current_chunk.append(segment)
            current_length += len(segment)
            if i == len(document) - 1 or current_length >= target_seq_length:
                if current_chunk:
                    a_end = 1
                    if len(current_chunk) >= 2:
                        a_end = rng.randint(1, len(current_chunk) - 1)
                    tokens_a = []
                    for j in range(a_end):
                        tokens_a.extend(current_chunk[j])
                    tokens_b = []
                    if len(current_chunk) == 1 or rng.random() < 0.5:
                        is_random_next = True
                        target_b_length = target_seq_length - len(tokens_a)
                        for _ in range(10):
                            random_document_index = rng.randint(0, len(all_documents) - 1)
                            if random_document_index != document_index:
                                break
                        random_document = all_documents[random_document_index]
                        random_start = rng.randint(0, len(random_document) - 1)
                        for j in range(random_start, len(random_document)):
                            tokens_b.extend(random_document[j])
                            if len(tokens_b) >= target_b_length:
                                break
                        i -= len(current_chunk) - a_end
                    else:
                        is_random_next = False
                        for j in range(a_end, len(current_chunk)):
                            tokens_b.extend(current_chunk[j])
                    truncate_seq_pair(tokens_a, tokens_b, max_num_tokens)
                    assert len(tokens_a) >= 1 and len(tokens_b) >= 1
                    tokens = [cls] + tokens_a + [sep] + tokens_b + [sep]
                    tokens, positions, labels = create_masked_lm_predictions(tokens)
                    instances.append({"ids": tokens, "positions": positions, "labels": labels,
                                      "a_length": len(tokens_a) + 2,
                                      "next_sentence": int(is_random_next)})
                current_chunk, current_length = [], 0
            i += 1
        return instances

    all_documents = [d for d in documents if d]
    rng.shuffle(all_documents)
    instances = []
    for _ in range(options.dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(create_instances_from_document(all_documents, document_index))
    rng.shuffle(instances)
    return instances


@pytest.mark.backend_neutral
def test_instances_follow_google_research_bert_draw_for_draw(corpus, tokenizer):
    docs = tokenize_documents(tokenizer, [d for c in plan_chunks(corpus) for d in read_chunk(c)])
    options = _options(max_seq_length=48, max_predictions_per_seq=7, short_seq_prob=0.3,
                       dupe_factor=2)
    ours = build_instances([list(d) for d in docs], tokenizer, options, random.Random(11))
    theirs = _reference_instances([[s.ids for s in d] for d in docs], options,
                                  replacement_ids(tokenizer.vocabulary), tokenizer.cls_token_id,
                                  tokenizer.sep_token_id, tokenizer.mask_token_id,
                                  random.Random(11))
    assert len(ours) == len(theirs) > 100
    assert sum(t["next_sentence"] for t in theirs) > 20 and any(t["a_length"] < 20 for t in theirs)
    for mine, ref in zip(ours, theirs):
        assert {k: mine[k] for k in ref} == ref


@pytest.mark.backend_neutral
def test_data_keeps_the_tokenizers_settings_and_reads_special_names_as_text(tmp_path):
    # a vocabulary kept with its accents (strip_accents=False, lowercase), and a
    # corpus that writes special tokens' names: the shards hold the accented
    # pieces, and "[SEP]" or "[MASK]" in the text as "[", "sep", "]"
    from bertdesk.tokenizer import BertTokenizer

    words = ["alice", "bob", "walks", "home", "cafe", "café", "creme", "crème", "use", "here",
             "sep", "mask", "[", "]", ".", "and", "talks"]
    tokenizer = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words,
                              lowercase=True, strip_accents=False)
    sentences = ["Alice walks home.", "Bob talks and walks.", "Use [SEP] here.",
                 "Use [MASK] here.", "Café crème.", "Alice and Bob walks home."]
    text = "\n\n".join(" ".join(sentences[(k + j) % 6] for j in range(4)) for k in range(30))
    corpus = tmp_path / "c.txt"
    corpus.write_text(text + "\n", encoding="utf-8")
    create_pretraining_data([corpus], tokenizer, tmp_path / "data", _options(max_seq_length=24))
    assert BertTokenizer.from_pretrained(tmp_path / "data").strip_accents is False
    ids, labels, positions = [], [], []
    for shard in (tmp_path / "data").glob("shard-*"):
        ids.append(np.load(shard / "token_ids.npy").astype(np.int64))
        labels.append(np.load(shard / "mask_labels.npy"))
        positions.append(np.load(shard / "mask_positions.npy"))
    ids, labels, positions = map(np.concatenate, (ids, labels, positions))
    vocab = {t: i for i, t in enumerate(tokenizer.vocabulary)}
    original = ids.copy()  # the text's own ids: the masked positions' labels put back
    rows, slots = np.nonzero(labels >= 0)
    original[rows, positions[rows, slots]] = labels[rows, slots]
    seen = set(original.ravel())
    assert {vocab["café"], vocab["crème"], vocab["sep"], vocab["["]} <= seen
    assert vocab["cafe"] not in seen and vocab["creme"] not in seen
    assert ((original == vocab["[SEP]"]).sum(axis=1) == 2).all()  # only the pair's own two
    assert not (original == vocab["[MASK]"]).any()  # every [MASK] is a masked position


# === Masking ===
@pytest.mark.backend_neutral
def test_masking_statistics_cap_and_specials():
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    replacement = replacement_ids(vocabulary)
    assert replacement == list(range(5, 100))
    rng = random.Random(0)
    counts = {"mask": 0, "same": 0, "random": 0}
    for trial in range(3000):
        n = rng.randint(4, 120)
        ids = [2] + [rng.randint(5, 99) for _ in range(n)] + [3]
        ids[n // 2] = 3  # a [SEP] in the middle, as in a pair
        out, positions, labels = mask_tokens(ids, [False] * len(ids), 0.15, 12, False,
                                             replacement, 4, {0, 2, 3}, rng)
        assert len(positions) == min(12, max(1, round(len(ids) * 0.15)))
        assert positions == sorted(set(positions))
        assert all(ids[p] not in (0, 2, 3) for p in positions)  # specials never chosen
        assert labels == [ids[p] for p in positions]
        unchosen = set(range(len(ids))) - set(positions)
        assert all(out[i] == ids[i] for i in unchosen)
        for p in positions:
            if out[p] == 4:
                counts["mask"] += 1
            elif out[p] == ids[p]:
                counts["same"] += 1
            else:
                assert out[p] in replacement
                counts["random"] += 1
    total = sum(counts.values())
    assert total > 20000
    assert abs(counts["mask"] / total - 0.8) < 0.01
    # "same" also gets the random draws that happened to pick the same id (1 in 95)
    assert abs(counts["same"] / total - 0.1) < 0.01
    assert abs(counts["random"] / total - 0.1) < 0.01


@pytest.mark.backend_neutral
def test_whole_word_masking_never_splits_a_word(corpus, tokenizer):
    docs = tokenize_documents(tokenizer, [d for c in plan_chunks(corpus) for d in read_chunk(c)])
    assert any(any(s.cont) for d in docs for s in d), "corpus has no multi-piece words"
    instances = build_instances(docs, tokenizer, _options(whole_word_mask=True), random.Random(3))
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    split_seen = 0
    for inst in instances:
        chosen = set(inst["positions"])
        assert len(chosen) <= 5
        specials = {i for i, t in enumerate(inst["ids"]) if t in (cls, sep)}
        words, current = [], []
        for i, c in enumerate(inst["cont"]):
            if (not c or i in specials or i - 1 in specials) and current:
                words.append(current)
                current = []
            current.append(i)
        words.append(current)
        for w in words:
            assert not (chosen & set(w)) or set(w) <= chosen, (w, chosen)
            split_seen += len(w) > 1 and set(w) <= chosen
    assert split_seen > 0  # multi-piece words did get masked (whole)
    # without whole-word masking, some word is masked only in part
    plain = build_instances(docs, tokenizer, _options(), random.Random(3))
    partial = 0
    for inst in plain:
        cont = inst["cont"]
        chosen = set(inst["positions"])
        partial += sum(1 for i in chosen if i + 1 < len(cont) and cont[i + 1]
                       and i + 1 not in chosen)
    assert partial > 0


@pytest.mark.backend_neutral
def test_chinese_words_from_spaces():
    from bertdesk.tokenizer import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "我", "们", "喜", "欢", "北", "京", "。"]
    tok = BertTokenizer(vocab)
    [[segment]] = tokenize_documents(tok, [["我们 喜欢 北京。"]], chinese_words=True)
    assert tok.id_to_token(segment.ids) == ["我", "们", "喜", "欢", "北", "京", "。"]
    assert segment.cont == [False, True, False, True, False, True, False]
    [[plain]] = tokenize_documents(tok, [["我们 喜欢 北京。"]])
    assert not any(plain.cont)


# === Instances and shards ===
@pytest.mark.backend_neutral
def test_instances_nsp_balance_and_layout(tmp_path, corpus, tokenizer):
    m = create_pretraining_data(corpus, tokenizer, tmp_path / "d", _options(dupe_factor=3))
    t = m["totals"]
    assert t["instances"] > 300
    # half random plus the forced ones (chunks of a single sentence)
    assert 0.45 < t["random_next"] / t["instances"] < 0.65
    data = PretrainingData(tmp_path / "d", batch_size=16)
    x, y = data.batch(0)
    cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    for r in range(16):
        k = int(x["padding_mask"][r].sum())
        ids = x["token_ids"][r]
        assert ids[0] == cls and ids[k - 1] == sep and (ids[k:] == 0).all()
        a_len = int((x["segment_ids"][r] == 0).sum()) - (32 - k)
        assert ids[a_len - 1] == sep and x["segment_ids"][r, a_len:k].all()
        labels = y["mlm_logits"][r]
        n = int((labels >= 0).sum())
        assert 1 <= n <= 5 and (labels[n:] == -1).all()
        pos = x["mask_positions"][r, :n]
        assert (pos > 0).all() and (pos < k).all() and (ids[pos] != sep).all()
        assert (ids[pos] == mask).any() or n < 3  # most chosen tokens read [MASK]
    assert set(np.unique(y["nsp_logits"])) <= {0, 1}


@pytest.mark.backend_neutral
def test_deterministic_for_a_seed_whatever_the_workers(tmp_path, corpus, tokenizer):
    opts = _options(chunk_bytes=3000)
    create_pretraining_data(corpus, tokenizer, tmp_path / "one", opts, workers=1)
    create_pretraining_data(corpus, tokenizer, tmp_path / "two", opts, workers=2)
    create_pretraining_data(corpus, tokenizer, tmp_path / "other",
                            _options(chunk_bytes=3000, seed=8))
    shards = sorted(p.name for p in (tmp_path / "one").glob("shard-*"))
    assert len(shards) > 2
    differs = False
    for s in shards:
        for f in (tmp_path / "one" / s).glob("*.npy"):
            a = np.load(f)
            assert np.array_equal(a, np.load(tmp_path / "two" / s / f.name)), f
            differs |= not np.array_equal(a, np.load(tmp_path / "other" / s / f.name))
    assert differs
    with pytest.raises(DataError, match="one: exists and is not an empty folder"):
        create_pretraining_data(corpus, tokenizer, tmp_path / "one", opts)


@pytest.mark.backend_neutral
def test_streaming_visits_every_instance_once_per_epoch(tmp_path, corpus, tokenizer):
    create_pretraining_data(corpus, tokenizer, tmp_path / "d", _options(chunk_bytes=2500))
    data = PretrainingData(tmp_path / "d", batch_size=8, seed=1)
    assert len(data.shards) > 3
    n = data.num_instances
    epoch0 = [data.locate(p) for p in range(n)]
    assert {e for e, _, _ in epoch0} == {0}
    assert len({(s, r) for _, s, r in epoch0}) == n  # each instance once
    epoch1 = [data.locate(n + p)[1:] for p in range(n)]
    assert sorted(epoch1) == sorted((s, r) for _, s, r in epoch0) and epoch1 != [
        (s, r) for _, s, r in epoch0]  # reshuffled
    # batch b is a pure function of b: a fresh reader gives the same batch 5
    again = PretrainingData(tmp_path / "d", batch_size=8, seed=1)
    for a, b in zip(data.batch(5), again.batch(5)):
        for k in a:
            assert np.array_equal(a[k], b[k])
    # the rows of a batch split across processes
    x, _ = data.batch(3)
    top, _ = data.batch(3, part=(0, 2))
    bottom, _ = data.batch(3, part=(1, 2))
    assert np.array_equal(np.concatenate([top["token_ids"], bottom["token_ids"]]), x["token_ids"])
    for b in range(0, 3 * data.batches_per_epoch, 7):  # a few epochs
        data.batch(b)
    assert len(data._arrays) <= data.cycle + 1  # only a few shards open at a time
    # batches mix shards (not one shard drained after another)
    mixed = [len({data.locate(b * 8 + r)[1] for r in range(8)}) for b in range(20)]
    assert np.mean(mixed) > 2
    narrow = PretrainingData(tmp_path / "d", batch_size=8, seed=1, cycle=2)
    assert len({(s, r) for _, s, r in (narrow.locate(p) for p in range(n))}) == n
    for b in range(0, narrow.batches_per_epoch, 3):
        narrow.batch(b)
        assert len(narrow._arrays) <= 3


@pytest.mark.backend_neutral
def test_dynamic_masking_changes_per_epoch_not_per_run(tmp_path, corpus, tokenizer):
    create_pretraining_data(corpus, tokenizer, tmp_path / "d",
                            _options(masking="dynamic", whole_word_mask=True))
    data = PretrainingData(tmp_path / "d", batch_size=4, seed=0)
    n = data.num_instances
    # the same instance in two epochs: same tokens underneath, different masks
    position = 0
    _, shard, row = data.locate(position)
    later = next(p for p in range(n, 2 * n) if data.locate(p)[1:] == (shard, row))
    first = data.batch(position // 4)
    second = data.batch(later // 4)
    i, j = position % 4, later % 4
    assert not np.array_equal(first[0]["mask_positions"][i], second[0]["mask_positions"][j])
    again = PretrainingData(tmp_path / "d", batch_size=4, seed=0).batch(position // 4)
    assert np.array_equal(first[0]["token_ids"], again[0]["token_ids"])


@pytest.mark.backend_neutral
def test_dupe_factor_varies_pairs_under_dynamic_masking(tmp_path, corpus, tokenizer):
    """Each pass over the corpus cuts its own sequence pairs, so a small corpus
    trained for many epochs does not see (and memorise) the same next-sentence
    pairs every time."""
    rows = {}
    for dupe in (1, 3):
        folder = tmp_path / f"d{dupe}"
        create_pretraining_data(corpus, tokenizer, folder, _options(masking="dynamic",
                                                                    dupe_factor=dupe))
        data = PretrainingData(folder, batch_size=4, seed=0)
        arrays = [data._shard(k) for k in range(len(data.shards))]
        rows[dupe] = {(tuple(a["token_ids"][r]), int(a["next_sentence"][r]))
                      for a in arrays for r in range(len(a["token_ids"]))}
        rows[dupe, "n"] = data.num_instances
    assert rows[3, "n"] > 2 * rows[1, "n"]
    assert len(rows[3]) > 1.5 * len(rows[1])


# === Objectives and optimizer ===
def test_masked_lm_loss_and_accuracy():
    import keras

    from bertdesk.pretraining.objectives import MaskedAccuracy, masked_lm_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 7)).astype("float32")
    labels = np.array([[1, 2, -1, -1], [0, 6, 5, -1], [3, -1, -1, -1]], np.int32)
    valid = labels >= 0
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean([logp[b, m, labels[b, m]] for b, m in zip(*np.nonzero(valid))])
    got = float(np.mean(keras.ops.convert_to_numpy(masked_lm_loss(labels, logits))))
    assert got == pytest.approx(expected, rel=1e-4)
    acc = MaskedAccuracy()
    acc.update_state(labels, logits)
    hits = (logits.argmax(-1) == labels)[valid]
    assert float(acc.result()) == pytest.approx(hits.mean())


def test_lamb_step_matches_the_paper():
    import keras

    from bertdesk.training.optimization import BertLamb

    w0 = np.array([[1.0, -2.0], [0.5, 3.0]], "float32")
    b0 = np.array([0.5, -0.3], "float32")
    g_w = np.array([[0.3, -0.1], [0.2, 0.4]], "float32")
    g_b = np.array([0.05, 0.2], "float32")
    kernel = keras.Variable(w0, name="kernel")
    bias = keras.Variable(b0, name="bias")
    opt = BertLamb(learning_rate=0.1, weight_decay=0.01, epsilon=1e-6)
    opt.apply_gradients([(g_w, kernel), (g_b, bias)])

    def adam(g):
        m, v = 0.1 * g / (1 - 0.9), 0.001 * g * g / (1 - 0.999)
        return m / (np.sqrt(v) + 1e-6)

    u = adam(g_w) + 0.01 * w0
    ratio = np.linalg.norm(w0) / np.linalg.norm(u)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), w0 - 0.1 * ratio * u,
                               rtol=1e-5)
    # biases (and LayerNorm): no decay, no trust ratio
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), b0 - 0.1 * adam(g_b), rtol=1e-5)


# === Pretraining loop ===
@pytest.fixture(scope="module")
def data_folder(tmp_path_factory, corpus, tokenizer):
    folder = tmp_path_factory.mktemp("ptdata") / "d"
    create_pretraining_data(corpus, tokenizer, folder, _options(masking="dynamic"))
    return folder


def _config(out, data_folder, **kw):
    from bertdesk.pretraining.pretrain import PretrainConfig

    base = dict(output=str(out), data=str(data_folder), preset="tiny", max_steps=6,
                batch_size=8, seq_length=32, learning_rate=1e-3, log_every=1, save_every=2,
                seed=3)
    base.update(kw)
    return PretrainConfig(**base)


def test_xla_by_default_where_it_is_the_faster(tmp_path):
    """`--jit-compile auto`: XLA on JAX; on TensorFlow in float32 but not in
    bfloat16 on a CPU, nor under a distribution; eager PyTorch; on and off
    as asked everywhere."""
    import keras

    from bertdesk.pretraining import pretrain

    backend = keras.backend.backend()
    cpu_only = backend != "tensorflow" or not pretrain._tensorflow_sees_a_gpu()
    expected = {("jax", False): True, ("jax", True): True,
                ("tensorflow", False): True, ("tensorflow", True): not cpu_only,
                ("torch", False): False, ("torch", True): False}
    for mixed in (False, True):
        config = _config(tmp_path, tmp_path, mixed_precision=mixed)
        assert pretrain._jit_compile(config) is expected[backend, mixed], (backend, mixed)
        for asked, value in (("on", True), ("off", False)):
            assert pretrain._jit_compile(
                _config(tmp_path, tmp_path, mixed_precision=mixed, jit_compile=asked)) is value
    if backend == "tensorflow":
        assert pretrain._jit_compile(_config(tmp_path, tmp_path, distribution="data")) is False


def _weights(folder):
    from bertdesk.io import read_checkpoint

    return read_checkpoint(folder).tensors


class Killed(Exception):
    pass


def test_prepared_data_sets_the_sequence_length_and_the_record_says_so(tmp_path, data_folder):
    """--data made at 32 tokens with --seq-length 128 (the default): the run
    uses the data's 32 and says so; pretraining_args.json recorded 128."""
    from bertdesk.pretraining.pretrain import run_pretrain

    said = []
    run_pretrain(_config(tmp_path / "run", data_folder, seq_length=128, max_steps=1),
                 sink=lambda e: e["event"] == "message" and said.append(e["text"]))
    assert f"{data_folder}: sequences of 32 tokens, as the data was made (--seq-length 128 " \
           "applies to data made from --corpus)" in said
    args = json.loads((tmp_path / "run" / "pretraining_args.json").read_text())
    assert args["seq_length"] == 32


def test_resume_after_interruption_continues_exactly(tmp_path, data_folder):
    from bertdesk.pretraining.pretrain import run_pretrain

    straight = run_pretrain(_config(tmp_path / "straight", data_folder))
    assert len(straight["history"]) == 6
    # each step logs the rate it updated with (no warm-up in 6 steps: linear from the peak;
    # it logged the next step's, 0 at the last) and the instances read over the data's
    assert [h["learning_rate"] for h in straight["history"]] == pytest.approx(
        [1e-3 * (1 - k / 6) for k in range(6)], rel=1e-5)
    assert straight["history"][-1]["epoch"] == pytest.approx(6 * 8 / straight["instances"])

    def kill_at_step_5(event):
        if event["event"] == "step" and event["step"] == 5:
            raise Killed()

    with pytest.raises(Killed):
        run_pretrain(_config(tmp_path / "resumed", data_folder), sink=kill_at_step_5)
    state = json.loads((tmp_path / "resumed/checkpoint/state.json").read_text())
    assert state["step"] == 4  # the last checkpoint before the kill
    # another batch size restarted the data at the wrong batch (and counted steps the
    # optimizer did not make), another seed read another order: refused, nothing changed
    for change, said in (({"batch_size": 4}, "--batch-size 8 (got 4)"),
                         ({"seed": 4}, "--seed 3 (got 4)"),
                         ({"learning_rate": 0.1}, "--learning-rate 0.001 (got 0.1)")):
        with pytest.raises(DataError, match=re.escape(f"run was started with {said}")):
            run_pretrain(_config(tmp_path / "resumed", data_folder, resume=True, **change))
    resumed = run_pretrain(_config(tmp_path / "resumed", data_folder, resume=True))
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight["history"], resumed["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)
    w1, w2 = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert set(w1) == set(w2) and any(k.startswith("cls.") for k in w1)  # heads exported
    for k in w1:
        np.testing.assert_allclose(w1[k], w2[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # a finished run resumed has nothing left: said, its files as they were
    said = []
    stamp = (tmp_path / "resumed/model.safetensors").stat().st_mtime_ns
    again = run_pretrain(_config(tmp_path / "resumed", data_folder, resume=True),
                         sink=said.append)
    assert again["steps"] == 6 and (tmp_path / "resumed/model.safetensors").stat(
        ).st_mtime_ns == stamp
    assert any("the run finished at step 6: nothing to resume" in e.get("text", "")
               for e in said)
    # the schedule was planned for 6 steps: more would run at a learning rate of 0
    with pytest.raises(DataError, match=r"planned for --max-steps 6; resume it with the "
                                        r"same \(got 9\)"):
        run_pretrain(_config(tmp_path / "resumed", data_folder, resume=True, max_steps=9))


def test_a_resume_with_other_data_options_is_refused(tmp_path, corpus, tokenizer):
    """A run that made its data from --corpus reused OUTPUT/data on --resume
    whatever the data options or corpus given now."""
    from bertdesk.pretraining.pretrain import run_pretrain

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tokenizer.vocabulary) + "\n", encoding="utf-8")
    cfg = _config(tmp_path / "run", None, data=None, corpus=[str(c) for c in corpus],
                  vocab=str(vocab), max_steps=1, save_every=1, dupe_factor=1)
    run_pretrain(cfg)
    for change, message in (({"masking": "static"}, r"masking 'dynamic' \(asked: 'static'\)"),
                            ({"corpus": [str(corpus[0])]}, r"corpus \[.*\] \(asked: \[")):
        with pytest.raises(DataError, match=r"data: this run's data was made with " + message):
            run_pretrain(replace(cfg, resume=True, **change))
    assert run_pretrain(replace(cfg, resume=True))["steps"] == 1  # the same: nothing to refuse
    respelt = [str(Path(os.path.relpath(c))) for c in corpus]  # the same files spelt otherwise
    assert run_pretrain(replace(cfg, resume=True, corpus=respelt))["steps"] == 1


def test_a_checkpoint_between_log_steps_holds_the_trained_weights(tmp_path, data_folder):
    """On JAX, `fit` keeps the weights outside the variables until a
    callback reads the model: a checkpoint at a step that was not also a
    log step failed (or would have saved the initial weights)."""
    from bertdesk.pretraining.pretrain import run_pretrain
    from bertdesk.training import resume_checkpoints

    def checkpoint_weights(out):
        folder = out / "checkpoint"
        model = resume_checkpoints.load(folder, resume_checkpoints.read_state(folder))
        return {w.path: keras.ops.convert_to_numpy(w) for w in model.backbone.weights}

    import keras

    outs = [tmp_path / f"log{k}" for k in (3, 1)]
    for out, log_every in zip(outs, (3, 1)):
        run_pretrain(_config(out, data_folder, max_steps=3, save_every=2, log_every=log_every))
    sparse, logged = (checkpoint_weights(out) for out in outs)
    assert set(sparse) == set(logged)
    for k in sparse:
        np.testing.assert_allclose(sparse[k], logged[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.backend_neutral
def test_model_parallel_replicates_an_embedding_its_axis_does_not_divide():
    """JAX refuses an uneven split: Google's 30,522 pieces over 4 devices
    stopped the run."""
    import keras

    from bertdesk.pretraining.distribution import bert_layout_map

    mesh = keras.distribution.DeviceMesh((1, 4), ["batch", "model"],
                                         [f"cpu:{i}" for i in range(4)])
    assert bert_layout_map(mesh, 30522)["bert/token_embedding/embeddings"] is None
    assert bert_layout_map(mesh, 30520)["bert/token_embedding/embeddings"].axes == ("model", None)
    assert bert_layout_map(mesh, 30522)["bert/encoder_layer_0/intermediate/kernel"].axes == (
        None, "model")


def test_pretraining_learns_and_accumulates(tmp_path, data_folder):
    """Masked-LM loss falls and accuracy rises on the toy grammar (random
    word choices: little to predict beyond names and suffixes); 2 batches of 4 with
    accumulation make one optimizer step."""
    from bertdesk.pretraining.pretrain import run_pretrain

    r = run_pretrain(_config(tmp_path / "a", data_folder, max_steps=60, log_every=10,
                             save_every=100, learning_rate=2e-3, dropout=0.0))
    first, last = r["history"][0], r["history"][-1]
    assert last["mlm_accuracy"] > first["mlm_accuracy"], r["history"]
    assert last["mlm_loss"] < first["mlm_loss"] - 0.5
    # throughput counts real tokens, not padding: the same count from the data itself
    from bertdesk.pretraining.pretraining_data import PretrainingData

    feed = PretrainingData(data_folder, batch_size=8, seed=3)
    real = sum(int(feed.batch(b)[0]["padding_mask"].sum()) for b in range(60))
    assert 0 < real < 60 * 8 * 32
    assert r["padding_fraction"] == pytest.approx(1 - real / (60 * 8 * 32))
    assert r["tokens_per_second"] == pytest.approx(
        r["positions_per_second"] * (1 - r["padding_fraction"]), rel=1e-9)
    assert all(h["tokens_per_second"] < h["positions_per_second"] for h in r["history"])
    # dropout 0 was a pretraining setting: the exported model keeps the preset's rates
    exported = json.loads((tmp_path / "a/bertdesk.json").read_text())["backbone"]
    assert (exported["dropout"], exported["attention_dropout"]) == (0.1, 0.1)
    from bertdesk.io import load_backbone

    assert load_backbone(tmp_path / "a").dropout == 0.1
    import keras

    for optimizer in ("lamb", "adamw"):  # adamw: the fused update on PyTorch
        acc = run_pretrain(_config(tmp_path / optimizer, data_folder, max_steps=3, batch_size=4,
                                   gradient_accumulation=2, optimizer=optimizer,
                                   save_every=100))
        from bertdesk.training import resume_checkpoints

        folder = tmp_path / optimizer / "checkpoint"
        assert sorted(p.name for p in folder.iterdir()) == ["state.json", "step-3"]
        model = resume_checkpoints.load(folder, resume_checkpoints.read_state(folder))
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3
        assert [h["step"] for h in acc["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_cli_pretrain_then_finetune(tmp_path, corpus):
    """From raw text to a fine-tuned classifier through the command line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "pretrained"
    cmd = [sys.executable, "-m", "bertdesk", "pretrain", "--corpus", *map(str, corpus),
           "--vocab-size", "150", "--preset", "tiny", "--output", str(out), "--max-steps", "4",
           "--batch-size", "8", "--seq-length", "32", "--log-every", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step 4/4" in p.stdout and "masked-LM accuracy" in p.stdout
    assert (out / "data" / "data.json").is_file() and (out / "vocab.txt").is_file()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 2 and "not empty" in p.stderr
    table = tmp_path / "t.csv"
    rows = ["text,label"] + [f"{n} {s}s,{i % 2}" for i, (n, s) in enumerate(
        (n, s) for n in NAMES for s in STEMS[:6])]
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "bertdesk", "finetune", "--train", str(table),
                        "--model", str(out), "--output", str(tmp_path / "ft"), "--epochs", "1",
                        "--batch-size", "8", "--max-length", "16"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "ft" / "model").is_dir()


# === Scale-out (each run in its own process: devices are fixed at start-up) ===
def _pretrain_events(backend, data_folder, out, *extra, env_extra=None, wait=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": backend}
    # each run asks for its own devices; other XLA flags (the test runner's) stay
    flags = [f for f in env.pop("XLA_FLAGS", "").split() if "device_count" not in f]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "bertdesk", "pretrain", "--data", str(data_folder),
           "--output", str(out), "--max-steps", "4", "--batch-size", "8", "--seq-length", "32",
           "--log-every", "1", "--dropout", "0", "--learning-rate", "1e-3", "--seed", "3",
           "--events", "jsonl", *extra]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return p if not wait else _events(p)


def _events(p):
    try:
        stdout, stderr = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.kill()
        stdout, stderr = p.communicate()
        raise AssertionError("pretrain run timed out: " + stderr[-3000:]) from None
    assert p.returncode == 0, stderr[-3000:]
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    losses = [e["loss"] for e in events if e["event"] == "step"]
    messages = [e["text"] for e in events if e["event"] == "message"]
    assert len(losses) == 4
    return losses, messages


@pytest.fixture(scope="module")
def jax_one_device(tmp_path_factory, data_folder):
    return _pretrain_events("jax", data_folder, tmp_path_factory.mktemp("one") / "out")[0]


@pytest.mark.slow
@pytest.mark.backend_neutral
def test_jax_data_and_model_parallel_match_one_device(tmp_path, data_folder, jax_one_device):
    for mode, placement in (("data", "replicated"), ("model", "sharded, shards of (128, 256)")):
        losses, messages = _pretrain_events("jax", data_folder, tmp_path / mode, "--distribution",
                                            mode, "--cpu-devices", "2")
        assert any(f"{placement}" in m and "on 2 device(s)" in m for m in messages), messages
        np.testing.assert_allclose(losses, jax_one_device, rtol=1e-5)
    assert jax_one_device[-1] < jax_one_device[0]


@pytest.mark.slow
@pytest.mark.backend_neutral
def test_multi_process_jax_matches_one_process(tmp_path, data_folder, jax_one_device):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [_pretrain_events("jax", data_folder, tmp_path / "mp", "--distribution", "data",
                              "--coordinator", f"localhost:{port}", "--num-processes", "2",
                              "--process-id", str(i), wait=False) for i in range(2)]
    results = [_events(p) for p in procs]
    for losses, messages in results:
        assert any("data parallel over 2 device(s)" in m for m in messages), messages
        np.testing.assert_allclose(losses, jax_one_device, rtol=1e-5)
    assert (tmp_path / "mp" / "model.safetensors").is_file()  # written once, by process 0


@pytest.mark.backend_neutral
def test_multi_process_output_refused_before_the_processes_join(tmp_path, data_folder):
    # Process 0 refuses a folder of the user's before it joins the others: it
    # does not start the coordinator and wait there for a process 1 (which, in
    # the old order, left process 1 waiting in a collective for a process 0
    # that had gone). Bounded by a timeout: the old order blocks here.
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    p = _pretrain_events("jax", data_folder, out, "--distribution", "data", "--coordinator",
                         "localhost:1", "--num-processes", "2", "--process-id", "0", wait=False)
    try:
        _, stderr = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError("process 0 joined the run before checking its output folder")
    assert p.returncode == 2 and "output folder is not empty" in stderr, stderr[-2000:]
    assert [f.name for f in out.iterdir()] == ["notes.txt"]


@pytest.mark.slow
@pytest.mark.backend_neutral
def test_tensorflow_mirrored_strategy_matches_one_device(tmp_path, data_folder):
    # both without XLA (MirroredStrategy runs without it)
    one, _ = _pretrain_events("tensorflow", data_folder, tmp_path / "one", "--jit-compile", "off")
    two, messages = _pretrain_events("tensorflow", data_folder, tmp_path / "two",
                                     "--distribution", "data", "--cpu-devices", "2")
    assert any("2 device(s) (TensorFlow MirroredStrategy)" in m for m in messages), messages
    # each replica averages over its own masked tokens, so the masked-LM loss is
    # weighted slightly differently (measured: up to 0.2%); a wrong reduction
    # (summed replicas, unscaled gradients) is off by far more
    np.testing.assert_allclose(two, one, rtol=1e-2)
    assert two[-1] < two[0]


@pytest.mark.slow
@pytest.mark.backend_neutral
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, data_folder):
    """A real kill -9 in the middle of a command-line run; --resume then
    ends with the weights an uninterrupted run ends with. (One backend: the
    in-process resume test covers each backend's generator state.)"""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "bertdesk", "pretrain", "--data", str(data_folder),
            "--max-steps", "120", "--batch-size", "8", "--seq-length", "32", "--save-every", "5",
            "--log-every", "5", "--learning-rate", "1e-3", "--seed", "3"]
    p = subprocess.run(base + ["--output", str(tmp_path / "straight")], capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    proc = subprocess.Popen(base + ["--output", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(state.read_text())["step"]
    assert 5 <= killed_at < 120
    p = subprocess.run(base + ["--output", str(tmp_path / "killed"), "--resume"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"resuming at step {json.loads(state.read_text())['step']}" not in p.stdout  # moved on
    w1, w2 = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    for k in w1:
        np.testing.assert_allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_mixed_precision_pretraining_runs(tmp_path, data_folder):
    from bertdesk.pretraining.pretrain import run_pretrain

    r = run_pretrain(_config(tmp_path / "bf16", data_folder, max_steps=2, mixed_precision=True))
    assert all(np.isfinite(h["loss"]) for h in r["history"])
    w = _weights(tmp_path / "bf16")
    assert all(v.dtype == np.float32 for v in w.values())  # variables stay float32


def test_gradient_checkpointing_pretrains_the_same_weights(tmp_path, data_folder, monkeypatch):
    """`gradient_checkpointing=True` reaches the pretraining model's blocks
    and trains, with dropout, to the plain run's weights."""
    from bertdesk.layers.bert_encoder_block import BertEncoderBlock
    from bertdesk.pretraining.pretrain import run_pretrain

    calls = []
    rematerialized = BertEncoderBlock._rematerialized
    monkeypatch.setattr(BertEncoderBlock, "_rematerialized",
                        lambda self, *a: calls.append(self.name) or rematerialized(self, *a))
    run_pretrain(_config(tmp_path / "plain", data_folder, max_steps=2))
    assert not calls
    run_pretrain(_config(tmp_path / "ckpt", data_folder, max_steps=2, gradient_checkpointing=True))
    assert calls
    plain, ckpt = _weights(tmp_path / "plain"), _weights(tmp_path / "ckpt")
    assert plain.keys() == ckpt.keys()
    for k in plain:
        np.testing.assert_allclose(plain[k], ckpt[k], atol=1e-5, err_msg=k)
