"""A raw-text corpus as documents of sentences, cut into byte-range chunks.

Format (google-research/bert's): documents separated by blank lines, text in
between. Lines are split into sentences with a rule-based splitter (a line
that already holds one sentence stays whole); `document_pattern` (a regular
expression) also starts a new document at every line it matches and drops
that line, for corpora such as WikiText whose articles are marked by
` = Title = ` headings instead of blank lines.

`plan_chunks` reads the corpus once, checking every line (missing or empty
file, NUL bytes, undecodable UTF-8: errors name the file and line), and cuts
it into chunks of about `chunk_bytes` at document boundaries. Chunks are
independent units of work: `read_chunk` turns one into documents without
reading anything else, so a corpus larger than memory is processed chunk by
chunk, in parallel.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from bertdesk.data.tables import DataError

# A sentence ends at . ! ? (then optional closing quotes or brackets) followed
# by white space and an upper-case letter, digit or opening quote; or at CJK
# full stops, which need no space (a run of them, "太好了！！！", ends one
# sentence: each mark had been a "sentence" of its own). Abbreviations ("Dr.
# Watson") are split; give one sentence per line to control it exactly.
_SENTENCE_END = re.compile(
    r"[.!?][\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9À-ÖØ-Þ])|[。！？]+(?:[”’」』）]+[。！？]*)*")


def split_sentences(line):
    """Sentences of one line of text (white space trimmed, empties dropped)."""
    sentences, start = [], 0
    for m in _SENTENCE_END.finditer(line):
        sentences.append(line[start:m.end()].strip())
        start = m.end()
    sentences.append(line[start:].strip())
    return [s for s in sentences if s]


@dataclass(frozen=True)
class Chunk:
    """Bytes `[start, end)` of `path`, beginning at line `first_line`."""

    path: str
    start: int
    end: int
    first_line: int


def _check_line(path, number, raw):
    if b"\x00" in raw:
        raise DataError(f"{path}: line {number}: a NUL byte; this looks like a binary file, "
                        "not text")
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: line {number}: not UTF-8 text (undecodable byte at position "
                        f"{e.start} of the line)") from None


def compile_document_pattern(document_pattern):
    """The compiled `--document-pattern` (None for none); DataError naming
    the option for a pattern that is not a regular expression."""
    if not document_pattern:
        return None
    try:
        return re.compile(document_pattern)
    except re.error as e:
        raise DataError(f"--document-pattern {document_pattern!r}: not a regular expression "
                        f"({e})") from None


def plan_chunks(files, chunk_bytes=32 << 20, document_pattern=None):
    """Check the corpus `files` and cut them into `Chunk`s of about
    `chunk_bytes`, each ending at a document boundary (a file always
    starts a new chunk)."""
    pattern = compile_document_pattern(document_pattern)
    files = [Path(p) for p in ([files] if isinstance(files, (str, Path)) else files)]
    if not files:
        raise DataError("no corpus files given")
    chunks = []
    for path in files:
        if not path.is_file():
            raise DataError(f"{path}: corpus file not found")
        start, first_line, offset, has_text, file_has_text = 0, 1, 0, False, False
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                line = _check_line(path, number, raw).rstrip("\r\n")
                boundary = not line.strip() or (pattern is not None and pattern.search(line))
                if boundary and has_text and offset - start >= chunk_bytes:
                    chunks.append(Chunk(str(path), start, offset, first_line))
                    start, first_line, has_text = offset, number, False
                if not boundary:
                    has_text = file_has_text = True
                offset += len(raw)
        if not file_has_text:
            raise DataError(f"{path}: no text (the file is empty or blank)")
        if has_text:
            chunks.append(Chunk(str(path), start, offset, first_line))
    return chunks


def read_chunk(chunk, document_pattern=None, sentences="split"):
    """Documents of one chunk: a list of documents, each a list of
    sentence strings. `sentences="line"` takes every line as one sentence
    (google-research/bert's input format) instead of splitting it."""
    if sentences not in ("split", "line"):
        raise ValueError(f"sentences must be 'split' or 'line', got {sentences!r}")
    pattern = re.compile(document_pattern) if document_pattern else None
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        data = f.read(chunk.end - chunk.start)
    documents = [[]]
    # split at b"\n" only, as reading the file line by line does (line numbers agree)
    for number, raw in enumerate(data.split(b"\n"), chunk.first_line):
        text = _check_line(chunk.path, number, raw).rstrip("\r")
        line = text.strip()
        if not line or (pattern is not None and pattern.search(text)):
            if documents[-1]:
                documents.append([])
            continue
        documents[-1].extend(split_sentences(line) if sentences == "split" else [line])
    return [d for d in documents if d]
