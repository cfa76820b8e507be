"""Token-classification data: CoNLL column files and character-per-line
(BMES or BIO) files, normalised to BIO (IOB2); strict entity metrics."""

from dataclasses import dataclass, field
from pathlib import Path

from bertdesk.data.tables import DataError, first_undecodable


@dataclass
class TaggedSentences:
    words: list  # list of list of str
    tags: list | None  # list of list of str (BIO / IOB2); None for words read without tags
    source: str = ""
    lines: list = field(default_factory=list)  # first line number of each sentence


def _read_lines(path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # "\r\n" and "\r" read as "\n"
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text ({first_undecodable(path)})") from None
    # lines end at "\n" only (splitlines() also cuts at \x0c, \x1c-\x1e, \x85,
    # U+2028 and U+2029, which then shift every line number after them)
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def iob1_to_iob2(tags):
    """IOB1 (I- may start an entity; B- only between two adjacent entities of
    one type) to IOB2 (every entity starts with B-). Valid IOB2 is unchanged."""
    return to_bio(tags)


def bmes_to_bio(tags):
    """B-/M-/E-/S- (BMES, also BIOES with I-) to BIO (IOB2). An entity ends at
    its E- or S-: an M-/I-/E- after one (or after O, or another type's tag)
    starts a new entity, as seqeval's default mode and conlleval read it
    (`S-X E-X` is two entities, not one)."""
    return to_bio(tags)


def is_bio(labels):
    """Whether a model's labels are BIO (O, B-TYPE, I-TYPE): the tags
    bertdesk trains; a checkpoint trained elsewhere may use BIOES or IO."""
    return all(label == "O" or label[:2] in ("B-", "I-") for label in labels)


def to_bio(tags):
    """A model's predicted tags, in any of the common schemes, as BIO
    (IOB2): B-/I- (IOB1 or IOB2: an I- after O or another type starts an
    entity, as Hugging Face's pipelines read it), BIOES/BMES (B-, I-/M-,
    E-, S-: an entity ends at its E- or S-) and IO (bare types such as
    "PER": a run of one type is one entity)."""
    out, kind, open_ = [], None, False  # the entity the previous tag left open
    for tag in tags:
        if tag == "O":
            out.append(tag)
            kind, open_ = None, False
            continue
        prefix, name = (tag[:2], tag[2:]) if tag[:2] in ("B-", "I-", "M-", "E-", "S-") \
            else ("", tag)
        inside = prefix in ("", "I-", "M-", "E-") and open_ and kind == name
        out.append(("I-" if inside else "B-") + name)
        kind, open_ = name, prefix not in ("E-", "S-")
    return out


def _continuing(labels, previous, following):
    """The label that carries an entity across a word with no word piece,
    between words tagged `previous` and `following` (None where the two
    are not one entity's)."""
    def split(tag):
        return (tag[:2], tag[2:]) if tag[:2] in ("B-", "I-", "M-", "E-", "S-") else ("", tag)

    (p_prefix, p_kind), (f_prefix, f_kind) = split(previous), split(following)
    if (previous == "O" or following == "O" or p_kind != f_kind
            or p_prefix not in ("", "B-", "I-", "M-") or f_prefix not in ("", "I-", "M-", "E-")):
        return None
    for prefix in (("",) if p_prefix == "" else ("I-", "M-")):
        if prefix + p_kind in labels:
            return prefix + p_kind
    return None


def _check_tag(tag, path, line, allowed):
    if tag != "O" and (len(tag) < 3 or tag[:2] not in allowed):
        raise DataError(f"{path}: line {line}: tag {tag!r} is not O or "
                        f"{'/'.join(p + 'TYPE' for p in allowed)}")


def read_conll(path, require_tags=True):
    """CoNLL-2003 style: `word ... TAG` per line (the tag is the last field),
    blank lines between sentences, `-DOCSTART-` lines skipped. IOB1 or IOB2
    tags come back as IOB2. Every line of a file must have as many fields as
    its first. Without `require_tags` (prediction) a file may hold the words
    alone, one per line: its `tags` are None."""
    lines = _read_lines(path)
    if not require_tags and _first_fields(lines) == 1:
        return _read_words(path, lines)
    words, tags, starts = [], [], []
    cur_w, cur_t, n_fields, start = [], [], None, None
    for lineno, line in enumerate(lines + [""], 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if cur_w:
                words.append(cur_w)
                tags.append(iob1_to_iob2(cur_t))
                starts.append(start)
            cur_w, cur_t = [], []
            continue
        if n_fields is None:
            n_fields = len(parts)
            if n_fields < 2:
                raise DataError(f"{path}: line {lineno}: expected 'word ... TAG', got {line!r}")
        if len(parts) != n_fields:
            raise DataError(f"{path}: line {lineno}: {len(parts)} fields, expected {n_fields} "
                            f"as on the first word line; the line reads {line!r}")
        _check_tag(parts[-1], path, lineno, ("B-", "I-"))
        if not cur_w:
            start = lineno
        cur_w.append(parts[0])
        cur_t.append(parts[-1])
    if not words:
        raise DataError(f"{path}: no sentences found")
    return TaggedSentences(words, tags, str(path), starts)


def _first_fields(lines):
    """How many fields the first word line has (None for a file without one)."""
    for line in lines:
        parts = line.split()
        if parts and parts[0] != "-DOCSTART-":
            return len(parts)
    return None


def _read_words(path, lines):
    """A CoNLL file of words alone (one per line, blank lines between
    sentences): the sentences, without tags."""
    words, starts, cur, start = [], [], [], None
    for lineno, line in enumerate(lines + [""], 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if cur:
                words.append(cur)
                starts.append(start)
            cur = []
            continue
        if len(parts) != 1:
            raise DataError(f"{path}: line {lineno}: {len(parts)} fields, expected one word "
                            f"per line as on the first word line; the line reads {line!r}")
        if not cur:
            start = lineno
        cur.append(parts[0])
    return TaggedSentences(words, None, str(path), starts)


def read_char_tags(path):
    """Character-per-line files (`char TAG`, blank line between sentences),
    BMES/BIOES or BIO tags, returned as BIO."""
    lines = _read_lines(path)
    words, tags, starts = [], [], []
    cur_w, cur_t, start = [], [], None
    for lineno, line in enumerate(lines + [""], 1):
        parts = line.split()
        if not parts:
            if cur_w:
                words.append(cur_w)
                tags.append(bmes_to_bio(cur_t))
                starts.append(start)
            cur_w, cur_t = [], []
            continue
        if len(parts) != 2:
            raise DataError(f"{path}: line {lineno}: expected 'CHARACTER TAG', got {line!r}")
        _check_tag(parts[1], path, lineno, ("B-", "M-", "E-", "S-", "I-"))
        if not cur_w:
            start = lineno
        cur_w.append(parts[0])
        cur_t.append(parts[1])
    if not words:
        raise DataError(f"{path}: no sentences found")
    return TaggedSentences(words, tags, str(path), starts)


def entities(tags):
    """Strict IOB2 entities as (type, start, end_exclusive): an entity is a
    B-X followed by any I-X; an I- that does not continue a B- of its type is
    no entity (seqeval's `mode="strict"`, scheme IOB2)."""
    found, i = [], 0
    while i < len(tags):
        tag = tags[i]
        if tag.startswith("B-"):
            kind, j = tag[2:], i + 1
            while j < len(tags) and tags[j] == "I-" + kind:
                j += 1
            found.append((kind, i, j))
            i = j
        else:
            i += 1
    return found


def entity_metrics(gold_tags, pred_tags):
    """Entity-level precision, recall, F1 (micro over all entities) and
    per type, comparing exact (type, start, end) spans."""
    gold = {(s, *e) for s, tags in enumerate(gold_tags) for e in entities(tags)}
    pred = {(s, *e) for s, tags in enumerate(pred_tags) for e in entities(tags)}

    def prf(g, p):
        tp = len(g & p)
        precision = tp / len(p) if p else 0.0
        recall = tp / len(g) if g else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": len(g)}

    types = sorted({e[1] for e in gold | pred})
    return {**prf(gold, pred),
            "per_type": {t: prf({e for e in gold if e[1] == t}, {e for e in pred if e[1] == t})
                         for t in types}}


def align_tags(encodings, tags, label_index, ignore_index=-100):
    """Per-token targets: each word's label on its first word piece,
    `ignore_index` on continuations and special tokens (the loss skips them).
    `encodings` come from `BertTokenizer.encode_words`."""
    import numpy as np

    targets = []
    for (ids, _, word_ids), sentence_tags in zip(encodings, tags):
        y = np.full(len(ids), ignore_index, np.int32)
        previous = -1
        for pos, w in enumerate(word_ids):
            if w >= 0 and w != previous:
                y[pos] = label_index[sentence_tags[w]]
            previous = w
        targets.append(y)
    return targets


def word_predictions(logits, word_ids, num_words, labels, fill="O"):
    """Word-level tags from per-token logits `(seq, classes)`: the argmax at
    each word's first piece; words cut off by truncation get `fill`."""
    tags = [fill] * num_words
    previous = -1
    for pos, w in enumerate(word_ids):
        if w >= 0 and w != previous and pos < len(logits):
            tags[w] = labels[int(logits[pos].argmax())]
        previous = w
    return tags


def word_windows(encodings, max_length):
    """Cut whole-sentence encodings (`BertTokenizer.encode_words` with
    `max_length=None`) between words into windows of at most `max_length`
    tokens, each with its own [CLS] and [SEP] and word ids counted from its
    first word. A sentence that fits is one window; a longer one gets windows
    that overlap by about half their words (the next starts at the first
    word past the middle of the one before), so every word is also read with
    context on both sides. A word with more pieces than a window holds keeps
    its first ones (its tag sits on the first). Returns the windows as
    `(token_ids, segment_ids, word_ids)` and, per window, `(sentence, first
    word)`."""
    import numpy as np

    room = max_length - 2
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a word")
    windows, origins = [], []
    for sentence, (ids, _, word_ids) in enumerate(encodings):
        cls, sep = ids[0], ids[-1]
        pieces, words = ids[1:-1], word_ids[1:-1]
        runs, start = [], 0  # (first piece, end) of each word with pieces, in order
        for pos in range(1, len(words) + 1):
            if pos == len(words) or words[pos] != words[start]:
                runs.append((start, min(pos, start + room)))
                start = pos
        if not runs:  # no word has a piece: one empty window keeps the sentence
            windows.append((np.asarray([cls, sep], np.int32), np.zeros(2, np.int32),
                            np.asarray([-1, -1], np.int32)))
            origins.append((sentence, 0))
            continue
        first = 0
        while True:
            last, used = first, 0  # runs[first:last] fill the window
            while last < len(runs) and used + runs[last][1] - runs[last][0] <= room:
                used += runs[last][1] - runs[last][0]
                last += 1
            last = max(last, first + 1)
            keep = np.concatenate([np.arange(s, e) for s, e in runs[first:last]])
            first_word = int(words[runs[first][0]])
            windows.append((np.concatenate([[cls], pieces[keep], [sep]]).astype(np.int32),
                            np.zeros(len(keep) + 2, np.int32),
                            np.concatenate([[-1], words[keep] - first_word, [-1]])
                            .astype(np.int32)))
            origins.append((sentence, first_word))
            if last == len(runs):
                break
            # the next window starts at the first word past this one's middle
            half, step = used / 2, first
            while step < last - 1 and runs[step][1] - runs[first][0] <= half:
                step += 1
            first = max(step, first + 1)
    return windows, origins


def tag_words(model, tokenizer, sentences, labels, max_length, batch_size=64):
    """Each word's tag and its probability, for sentences of pre-split
    words, from a token classifier: the argmax at the word's first piece. A
    sentence longer than `max_length` tokens is tagged in overlapping
    windows cut between words (`word_windows`), each word by the window
    where it sits farthest from an edge. A word the tokenizer gives no piece
    (only characters it drops, such as a variation selector on a line of its
    own) has probability None and is tagged "O", or, between two words of
    one entity, the tag that continues it (I-/M-). Returns
    `[(tags, probs)]`."""
    import numpy as np

    from bertdesk.data.batching import predict_encodings

    encodings = tokenizer.encode_words(sentences, max_length=None)
    windows, origins = word_windows(encodings, max_length)
    logits = predict_encodings(model, [w[:2] for w in windows], batch_size)
    out = [(["O"] * len(words), [None] * len(words)) for words in sentences]
    margin = [[-1] * len(words) for words in sentences]  # pieces to the nearer window edge
    for (_, _, word_ids), window_logits, (sentence, first) in zip(windows, logits, origins):
        tags, probs = out[sentence]
        previous = -1
        for pos, w in enumerate(word_ids):
            edge = min(pos, len(word_ids) - 1 - pos)
            if w >= 0 and w != previous and edge > margin[sentence][first + w]:
                row = window_logits[pos] - window_logits[pos].max()
                p = np.exp(row) / np.exp(row).sum()
                k = int(p.argmax())
                tags[first + w], probs[first + w] = labels[k], float(p[k])
                margin[sentence][first + w] = edge
            previous = w
    for tags, probs in out:
        tagged = [i for i, p in enumerate(probs) if p is not None]
        for before, after in zip(tagged, tagged[1:]):
            if after > before + 1:
                fill = _continuing(labels, tags[before], tags[after])
                if fill:
                    tags[before + 1:after] = [fill] * (after - before - 1)
    return out
