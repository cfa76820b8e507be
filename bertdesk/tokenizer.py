"""BERT WordPiece tokenizer on the compiled `tokenizers` library.

The pipeline is the one transformers' `BertTokenizerFast` builds from a
`vocab.txt` (BertNormalizer, BertPreTokenizer, WordPiece, [CLS]/[SEP]
template), so ids match it exactly; the Rust core encodes batches in
parallel, keeping 100k sentences to seconds.
"""

import json
import os
import re
import unicodedata
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# Where a model folder keeps its vocabulary, in the order they are looked for:
# bertdesk's, transformers' and Google's file; keras-hub's; and the fast
# tokenizer's file alone, all transformers 5 writes.
VOCAB_FILES = ("vocab.txt", "assets/tokenizer/vocabulary.txt", "tokenizer.json")


def find_vocab(folder):
    """The vocabulary file of a model folder (`VOCAB_FILES`), or None."""
    folder = Path(folder)
    return next((folder / name for name in VOCAB_FILES if (folder / name).is_file()), None)


def read_vocab(path):
    """Read a `vocab.txt` (one word piece per line, id = line number), or the
    WordPiece vocabulary of a `tokenizer.json` (its added tokens included)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: vocabulary file not found")
    from bertdesk.io.errors import CheckpointError  # a folder's file: the command line reports it

    if path.suffix == ".json":
        tokens = _tokenizer_json_vocab(path)
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]") if t not in set(tokens)]
        if missing:
            raise CheckpointError(f"{path}: vocabulary lacks the special tokens {missing}")
        return tokens
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not the first piece
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text ({e})") from None
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    tokens = [t.rstrip("\r") for t in tokens]
    seen = {}
    for line, token in enumerate(tokens, 1):
        if token in seen:
            raise CheckpointError(
                f"{path}: line {line}: token {token!r} already on line {seen[token]}"
            )
        seen[token] = line
    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]") if t not in seen]
    if missing:
        raise CheckpointError(f"{path}: vocabulary lacks the special tokens {missing}")
    return tokens


def _tokenizer_json_vocab(path):
    """The word pieces of a `tokenizer.json`'s WordPiece model, by id."""
    from bertdesk.io.errors import CheckpointError
    from bertdesk.io.formats import read_json

    data = read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "WordPiece" or not isinstance(
            model.get("vocab"), dict):
        kind = model.get("type") if isinstance(model, dict) else None
        raise CheckpointError(f"{path}: expected a WordPiece tokenizer's vocabulary "
                              f"(model.type 'WordPiece' with a 'vocab'), got {kind!r}")
    by_id = {}
    entries = list(model["vocab"].items()) + [
        (t.get("content"), t.get("id")) for t in data.get("added_tokens") or []
        if isinstance(t, dict)]
    for token, i in entries:
        if not isinstance(token, str) or not isinstance(i, int) or isinstance(i, bool):
            raise CheckpointError(f"{path}: vocabulary entry {token!r}: {i!r} is not "
                                  "a token and its id")
        if by_id.setdefault(i, token) != token:
            raise CheckpointError(f"{path}: id {i} is both {by_id[i]!r} and {token!r}")
    if sorted(by_id) != list(range(len(by_id))):
        gaps = sorted(set(range(max(by_id, default=-1) + 1)) - set(by_id))[:5]
        raise CheckpointError(f"{path}: vocabulary ids are not 0..{len(by_id) - 1} "
                              f"(missing {gaps})")
    tokens = [by_id[i] for i in range(len(by_id))]
    if len(set(tokens)) != len(tokens):
        raise CheckpointError(f"{path}: a token appears under two ids")
    return tokens


class BertTokenizer:
    """WordPiece tokenizer for BERT.

    Args:
        vocabulary: list of word pieces (id = index) or a path to `vocab.txt`.
        lowercase: lower-case (and strip accents, unless `strip_accents` is
            False) as uncased checkpoints expect.
        strip_accents: None follows `lowercase`, as in the reference.
        tokenize_chinese_chars: split CJK ideographs one per token.

    Call with a list of texts (and optionally `text_pairs`) to get numpy
    arrays `token_ids`, `segment_ids`, `padding_mask` `(batch, seq)` that
    `BertBackbone` takes as they are; `return_offsets=True` adds `offsets`
    `(batch, seq, 2)` character spans (0, 0 for special tokens and padding)
    and `return_word_ids=True` adds `word_ids` `(batch, seq)` (-1 where none).
    """

    def __init__(self, vocabulary, lowercase=True, strip_accents=None,
                 tokenize_chinese_chars=True):
        if isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = read_vocab(vocabulary)
        self.vocabulary = list(vocabulary)
        self.lowercase = bool(lowercase)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        vocab = {token: i for i, token in enumerate(self.vocabulary)}
        for token in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"):
            if token not in vocab:
                raise ValueError(f"vocabulary lacks the special token {token}")
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=self.tokenize_chinese_chars,
            strip_accents=strip_accents,
            lowercase=self.lowercase,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        tok.decoder = decoders.WordPiece(prefix="##")
        # Special tokens in the text are matched whole, never split.
        tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
        self._tokenizer = _TakesAnyText(tok)
        self.pad_token_id = vocab["[PAD]"]
        self.cls_token_id = cls_id
        self.sep_token_id = sep_id
        self.unk_token_id = vocab["[UNK]"]
        self.mask_token_id = vocab.get("[MASK]")

    # === Loading and saving ===
    @classmethod
    def from_pretrained(cls, folder):
        """Read the folder's vocabulary (`vocab.txt`, keras-hub's
        `assets/tokenizer/vocabulary.txt`, or the `tokenizer.json` alone that
        transformers 5 saves) and the casing from its config files."""
        folder = Path(folder)
        vocab = find_vocab(folder)
        if vocab is None:
            raise FileNotFoundError(f"{folder}: no vocab.txt (or tokenizer.json) in this folder")
        return cls(vocab, **_settings_from_folder(folder))

    def save(self, folder):
        """Write `vocab.txt` and `tokenizer_config.json` into `folder`."""
        from bertdesk.io.atomic import atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "vocab.txt", "".join(t + "\n" for t in self.vocabulary))
        atomic_write_text(
            folder / "tokenizer_config.json",
            json.dumps(
                {
                    "tokenizer_class": "BertTokenizer",
                    "do_lower_case": self.lowercase,
                    "strip_accents": self.strip_accents,
                    "tokenize_chinese_chars": self.tokenize_chinese_chars,
                    "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                    "cls_token": "[CLS]", "mask_token": "[MASK]",
                    "model_max_length": 512,
                },
                indent=2,
            ),
        )

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    # === Encoding ===
    def tokenize(self, text):
        """Word pieces of one text, without special tokens."""
        self._tokenizer.no_truncation()  # the batch methods leave theirs set
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def encode(self, text, text_pair=None):
        """Ids of one text (or pair) with [CLS]/[SEP], no truncation."""
        self._tokenizer.no_truncation()
        return self._tokenizer.encode(text, text_pair).ids

    def id_to_token(self, ids):
        """Word pieces (strings) of `ids`."""
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    def decode(self, ids, skip_special_tokens=True):
        return self._tokenizer.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    def encode_ragged(self, texts, text_pairs=None, max_length=128, return_cut=False):
        """Unpadded encodings for batching later: a list of
        `(token_ids, segment_ids)` int32 arrays, truncated to `max_length`;
        with `return_cut`, also how many of them were cut to it."""
        tok = self._tokenizer
        tok.enable_truncation(max_length, strategy="longest_first")
        tok.no_padding()
        texts = list(texts)
        batch = (tok.encode_batch(texts) if text_pairs is None
                 else tok.encode_batch(list(zip(texts, list(text_pairs)))))
        encodings = [(np.asarray(e.ids, np.int32), np.asarray(e.type_ids, np.int32))
                     for e in batch]
        if return_cut:
            return encodings, sum(bool(e.overflowing) for e in batch)
        return encodings

    def encode_words(self, sentences, max_length=128, return_cut=False):
        """Encode pre-split words (NER): a list of `(token_ids, segment_ids,
        word_ids)` int32 arrays per sentence, word_ids -1 at [CLS]/[SEP].
        `max_length=None` keeps every piece; with `return_cut`, also how many
        sentences were cut to `max_length`."""
        tok = self._tokenizer
        if max_length is None:
            tok.no_truncation()
        else:
            tok.enable_truncation(max_length, strategy="longest_first")
        tok.no_padding()
        batch = tok.encode_batch([list(words) for words in sentences], is_pretokenized=True)
        encodings = [(np.asarray(e.ids, np.int32), np.asarray(e.type_ids, np.int32),
                      np.asarray([-1 if w is None else w for w in e.word_ids], np.int32))
                     for e in batch]
        if return_cut:
            return encodings, sum(bool(e.overflowing) for e in batch)
        return encodings

    def word_spans(self, text):
        """The words of `text` as this tokenizer splits it before WordPiece
        (at whitespace and punctuation, each CJK character on its own when
        `tokenize_chinese_chars`): `(start, end)` character spans into `text`.
        Characters the normaliser drops (control characters) are in no word."""
        tok = self._tokenizer
        tok.no_truncation()
        tok.no_padding()
        enc = tok.encode(text, add_special_tokens=False)
        spans = {}
        for word, (start, end) in zip(enc.word_ids, enc.offsets):
            if word is None:
                continue
            first, last = spans.get(word, (start, end))
            spans[word] = (min(first, start), max(last, end))
        words = [spans[w] for w in sorted(spans)]
        # a word's trailing marks stop where the next word starts (a keycap's
        # enclosing mark may be a word of its own)
        nexts = [start for start, _ in words[1:]] + [len(text)]
        return [(start, min(span_end(text, end), max(end, following)))
                for (start, end), following in zip(words, nexts)]

    def __call__(self, texts, text_pairs=None, max_length=128, padding="max_length",
                 return_offsets=False, return_word_ids=False):
        """Encode a batch.

        Args:
            texts: a string or a list of strings.
            text_pairs: optional second texts, same length as `texts`.
            max_length: truncate (longer side of a pair first) to this many
                tokens including specials.
            padding: "max_length" pads to `max_length`; "longest" pads to the
                longest sequence of this batch.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if text_pairs is not None:
            text_pairs = [text_pairs] if isinstance(text_pairs, str) else list(text_pairs)
            if len(text_pairs) != len(texts):
                raise ValueError(
                    f"text_pairs has {len(text_pairs)} items but texts has {len(texts)}"
                )
        for name, values in (("texts", texts), ("text_pairs", text_pairs or [])):
            for i, t in enumerate(values):
                if not isinstance(t, str):
                    raise TypeError(f"{name}[{i}] is {type(t).__name__}, expected str")
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
        if max_length < (3 if text_pairs is None else 4):
            raise ValueError(f"max_length {max_length} leaves no room for text")

        tok = self._tokenizer
        tok.enable_truncation(max_length, strategy="longest_first")
        tok.no_padding()
        batch = (
            tok.encode_batch(texts) if text_pairs is None
            else tok.encode_batch(list(zip(texts, text_pairs)))
        )
        length = max_length if padding == "max_length" else max((len(e.ids) for e in batch), default=0)
        n = len(batch)
        token_ids = np.full((n, length), self.pad_token_id, dtype=np.int32)
        segment_ids = np.zeros((n, length), dtype=np.int32)
        padding_mask = np.zeros((n, length), dtype=np.int32)
        offsets = np.zeros((n, length, 2), dtype=np.int32) if return_offsets else None
        word_ids = np.full((n, length), -1, dtype=np.int32) if return_word_ids else None
        for i, e in enumerate(batch):
            k = len(e.ids)
            token_ids[i, :k] = e.ids
            segment_ids[i, :k] = e.type_ids
            padding_mask[i, :k] = 1
            if return_offsets:
                offsets[i, :k] = e.offsets
                special = np.asarray(e.special_tokens_mask[:k], bool)
                offsets[i, :k][special] = 0
            if return_word_ids:
                word_ids[i, :k] = [-1 if w is None else w for w in e.word_ids]
        out = {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
        if return_offsets:
            out["offsets"] = offsets
        if return_word_ids:
            out["word_ids"] = word_ids
        return out


class _TakesAnyText:
    """A `tokenizers.Tokenizer` whose `encode` and `encode_batch` also take
    text holding lone surrogates (a JSON file's `"\\ud83d"` escape of half an
    emoji reads as one): the Rust core refuses such a string (TypeError
    "TextInputSequence must be str"), so each is read as U+FFFD, the
    replacement character, which keeps every offset (one code point for
    one) and becomes [UNK]. Everything else is the tokenizer's own."""

    def __init__(self, tokenizer):
        object.__setattr__(self, "_inner", tokenizer)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):  # (settings such as `encode_special_tokens`)
        setattr(self._inner, name, value)

    def encode(self, *args, **kwargs):
        try:
            return self._inner.encode(*args, **kwargs)
        except TypeError:
            return self._inner.encode(*_replace_surrogates(args), **kwargs)

    def encode_batch(self, inputs, *args, **kwargs):
        try:
            return self._inner.encode_batch(inputs, *args, **kwargs)
        except TypeError:
            return self._inner.encode_batch(_replace_surrogates(inputs), *args, **kwargs)


_SURROGATES = re.compile("[\ud800-\udfff]")


def _replace_surrogates(value):
    """`value` (text, or lists and tuples of it) with lone surrogates as U+FFFD."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, (list, tuple)):
        return type(value)(map(_replace_surrogates, value))
    return value


def span_end(text, end):
    """`end` moved past the marks that belong to the character before it:
    combining accents (an uncased tokenizer strips them: "Zoe\u0301" is the
    token "zoe", offsets 0-3), enclosing marks and variation selectors, which
    no token covers. Format characters (soft hyphen, zero-width space and
    joiner, direction marks) are not the word's: the normaliser drops them
    inside a word, and after one they stay out of it ("Paris\u200e" ends at
    "Paris", as the reference offsets do)."""
    while end < len(text) and unicodedata.category(text[end]) in ("Mn", "Me"):
        end += 1
    return end


def _settings_from_folder(folder):
    """The tokenizer's settings (`lowercase`, `strip_accents`, and
    `tokenize_chinese_chars` where recorded) from a checkpoint folder's
    config files."""
    configured = False  # a tokenizer config without a casing: transformers' default applies
    for name in ("tokenizer_config.json", "tokenizer.json", "bertdesk.json"):
        path = folder / name
        if not path.is_file():
            continue
        configured = True
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            from bertdesk.io.errors import CheckpointError

            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        if name == "tokenizer.json" and isinstance(data.get("config"), dict):
            data = data["config"]  # keras-hub tokenizer.json
        elif name == "tokenizer.json":
            data = _bert_normalizer_settings(data.get("normalizer"))
        elif name == "bertdesk.json":
            data = data.get("tokenizer", {})
        if not isinstance(data, dict):
            continue
        for key in ("do_lower_case", "lowercase"):
            if key in data:
                settings = {"lowercase": bool(data[key]),
                            "strip_accents": data.get("strip_accents")}
                if isinstance(data.get("tokenize_chinese_chars"), bool):
                    settings["tokenize_chinese_chars"] = data["tokenize_chinese_chars"]
                return settings
    # Google's folders record casing only in their name (e.g. uncased_L-12_H-768_A-12);
    # one with no config and no name that says is read by its vocabulary: a
    # lower-cased input never reaches capitalised pieces, so one that holds them
    # is cased. (A config without a casing: lower-cased, as transformers reads it.)
    name = folder.resolve().name.lower()
    if "cased" in name:
        return {"lowercase": "uncased" in name, "strip_accents": None}
    if configured:
        return {"lowercase": True, "strip_accents": None}
    return {"lowercase": not _vocabulary_is_cased(folder / "vocab.txt"), "strip_accents": None}


def _vocabulary_is_cased(path):
    """Whether more than `CASED_SHARE` of a vocab.txt's pieces hold a capital
    letter (`capital_pieces`). False where there is no such file."""
    try:
        pieces = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    capitals, total = capital_pieces(pieces)
    return capitals > CASED_SHARE * total


def capital_pieces(vocabulary):
    """(pieces with a capital letter, pieces) of a vocabulary, special tokens
    such as [CLS] aside. A capital is a letter whose lower case differs ("ℝ",
    which bert-base-uncased holds, is none): BERT's uncased English
    vocabularies have none (the bundled MiniLM's: 0 of 30,522), lower-casing
    everything they were made from."""
    pieces = [p for p in vocabulary if p and not (p.startswith("[") and p.endswith("]"))]
    return sum(p != p.lower() for p in pieces), len(pieces)


# The share of capitalised pieces above which a vocabulary is cased.
CASED_SHARE = 0.01


def _bert_normalizer_settings(normalizer):
    """tokenizer_config.json's settings from a `tokenizer.json`'s
    BertNormalizer (alone or inside a Sequence), or None without one."""
    if not isinstance(normalizer, dict):
        return None
    if normalizer.get("type") == "Sequence":
        inner = [_bert_normalizer_settings(n) for n in normalizer.get("normalizers") or []]
        return next((settings for settings in inner if settings), None)
    if normalizer.get("type") != "BertNormalizer":
        return None
    return {"do_lower_case": normalizer.get("lowercase", True),
            "strip_accents": normalizer.get("strip_accents"),
            "tokenize_chinese_chars": normalizer.get("handle_chinese_chars", True)}
