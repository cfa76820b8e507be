"""Train a WordPiece vocabulary from raw text with the exact normalisation and
pre-tokenisation `BertTokenizer` applies (taken from a `BertTokenizer`, so
the two can never drift): BERT's text cleaning, CJK characters split one per
token, lower-casing and accent stripping unless cased, punctuation split.

The corpus is streamed line by line; a file that is missing, empty, not
UTF-8 or binary stops with its name and the line.

Determinism: the `tokenizers` trainer breaks exact frequency ties in an
order that varies from run to run, so on a corpus with many ties (a
repeated toy text) two runs can pick different pieces at the cut-off; on
WikiText-2 three runs at 2,000 pieces chose the same set. The written order
is canonical (`canonical_key`), so the same set is always the same file."""

from pathlib import Path

from bertdesk.data.tables import DataError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _lines(path):
    """Yield the text lines of one corpus file, checking it as it goes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found")
    seen_text = False
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if b"\x00" in raw:
                raise DataError(f"{path}: line {number}: a NUL byte; this looks like a binary "
                                "file, not text")
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {number}: not UTF-8 text (undecodable byte at "
                                f"position {e.start} of the line)") from None
            if line.strip():
                seen_text = True
                yield line
    if not seen_text:
        raise DataError(f"{path}: no text (the file is empty or blank)")


def vocabulary_tokenizer(path, cased=False):
    """The `BertTokenizer` of `--vocab`: a folder with its own settings
    (tokenizer_config.json), or a bare vocab.txt read lower-cased unless
    `cased`. A vocab.txt records no casing, so its pieces are checked
    against the setting: capitalised pieces read lower-cased are never
    used (a cased vocabulary): refused, naming the fix. A vocabulary
    without a capital read `cased` turns every capital into [UNK] if it
    is an uncased one, but may be a cased one of lower-case text: a
    warning. (A capital is a letter whose lower case differs: "ℝ", which
    bert-base-uncased holds, is none.)"""
    import warnings

    from bertdesk.tokenizer import CASED_SHARE, BertTokenizer, capital_pieces

    path = Path(path)
    if path.is_dir():
        return BertTokenizer.from_pretrained(path)
    tokenizer = BertTokenizer(path, lowercase=not cased)
    upper, total = capital_pieces(tokenizer.vocabulary)
    pieces = [p for p in tokenizer.vocabulary if not (p.startswith("[") and p.endswith("]"))]
    lower = sum(any(c != c.upper() for c in p) for p in pieces)
    if not cased and upper > CASED_SHARE * total:
        raise DataError(f"{path}: {upper:,} of its {total:,} pieces have capital letters, "
                        "so it is a cased vocabulary, read lower-cased here (those pieces would "
                        "never be used): add --cased")
    if cased and upper == 0 and lower > CASED_SHARE * total:
        warnings.warn(f"{path}: no piece has a capital letter: if it is an uncased vocabulary, "
                      "--cased makes every capitalised word [UNK]", stacklevel=2)
    return tokenizer


def train_vocabulary(corpus, vocab_size=30522, lowercase=True, min_frequency=2,
                     limit_alphabet=None):
    """A `BertTokenizer` whose WordPiece vocabulary is learnt from the
    `corpus` files: `[PAD] [UNK] [CLS] [SEP] [MASK]` first (ids 0-4), then
    the characters, then merged pieces (continuations prefixed `##`), at
    most `vocab_size` entries, except that every character the corpus holds
    (and its `##` form) is kept: a corpus with more characters than that
    gives more entries (`limit_alphabet` keeps only the most frequent, the
    others then read as [UNK])."""
    from tokenizers import Tokenizer, models, trainers

    from bertdesk.tokenizer import BertTokenizer

    files = [Path(p) for p in ([corpus] if isinstance(corpus, (str, Path)) else corpus)]
    if not files:
        raise DataError("no corpus files given")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
            or vocab_size < len(SPECIALS) + 1:
        raise DataError(f"--vocab-size: expected a whole number > {len(SPECIALS)} (the "
                        f"specials and a piece), got {vocab_size!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 0:
        raise DataError(f"--min-frequency: expected a whole number >= 0, got {min_frequency!r}")
    reference = BertTokenizer(SPECIALS, lowercase=lowercase)._tokenizer
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = reference.normalizer
    tok.pre_tokenizer = reference.pre_tokenizer
    options = {} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
        continuing_subword_prefix="##", show_progress=False, **options)

    def stream():
        for path in files:
            yield from _lines(path)

    tok.train_from_iterator(stream(), trainer)
    learnt = set(tok.get_vocab()) - set(SPECIALS)
    return BertTokenizer(SPECIALS + sorted(learnt, key=canonical_key), lowercase=lowercase)


def canonical_key(token):
    """Order of the learnt pieces in vocab.txt: characters, then `##`
    characters, then longer pieces, then longer `##` pieces, each by code
    point. WordPiece matches longest-first, so the order changes nothing
    but the ids; a fixed order makes the same vocabulary the same file (the
    trainer's own order depends on hash-map iteration)."""
    body = token[2:] if token.startswith("##") else token
    return (len(body) > 1, token.startswith("##"), token)


def coverage(tokenizer, corpus, max_lines=20000):
    """How the vocabulary cuts a corpus: share of words that become [UNK]
    and word pieces per word, over the first `max_lines` lines."""
    words = unknown = pieces = 0
    pre = tokenizer._tokenizer.pre_tokenizer
    norm = tokenizer._tokenizer.normalizer
    for n, line in enumerate(l for p in corpus for l in _lines(p)):
        if n >= max_lines:
            break
        for word, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
            ids = tokenizer._tokenizer.encode(word, add_special_tokens=False).ids
            words += 1
            pieces += len(ids)
            unknown += ids == [tokenizer.unk_token_id]
    return {"words": words, "unknown_share": unknown / max(1, words),
            "pieces_per_word": pieces / max(1, words)}
