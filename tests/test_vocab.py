"""WordPiece vocabulary training (`bertdesk vocab`)."""

import pytest

from bertdesk.cli import main as cli_main
from bertdesk.data.tables import DataError
from bertdesk.pretraining.vocab import SPECIALS, train_vocabulary
from bertdesk.tokenizer import BertTokenizer

pytestmark = pytest.mark.backend_neutral

ENGLISH = ["The quick brown fox jumps over the lazy dog.",
           "Running, jumping and swimming are Olympic sports!",
           "Naïve café owners were running the Café Crème.",
           "Unbelievable: the foxes kept jumping over dogs."]
CHINESE = ["我们今天去北京。", "北京是中国的首都。"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    lines = [ENGLISH[i % 4] + " " + CHINESE[i % 2] for i in range(400)]
    path.write_text("\n".join(lines) + "\n\n" + "\n".join(reversed(lines)), encoding="utf-8")
    return path


def test_specials_first_cjk_single_and_same_normalisation(corpus):
    tok = train_vocabulary([corpus], vocab_size=300, lowercase=True)
    vocab = tok.vocabulary
    assert vocab[:5] == SPECIALS and len(vocab) <= 300 and len(set(vocab)) == len(vocab)
    # CJK characters are tokens of their own, never merged, never continuations
    for ch in "我们今天去北京是中国的首都":
        assert ch in vocab and "##" + ch not in vocab
    assert not any(len(t) > 1 and any("\u4e00" <= c <= "\u9fff" for c in t) for t in vocab)
    # the same normalisation as the tokenizer: lower-cased, accents stripped
    assert "naive" in vocab or "na" in vocab
    assert not any(c in t for t in vocab[5:] for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZéïè")
    # words of the corpus never become [UNK], and frequent words are whole
    ids = tok.encode("The quick brown fox, 北京!")
    assert tok.unk_token_id not in ids
    for word in ("the", "quick", "jumping", "running"):
        assert word in vocab


def test_cased_keeps_case_and_accents(corpus):
    tok = train_vocabulary([corpus], vocab_size=400, lowercase=False)
    assert {"The", "Café"} <= set(tok.vocabulary) or {"The", "Caf", "##é"} <= set(tok.vocabulary)
    assert not tok.lowercase and "the" in tok.vocabulary
    assert tok.encode("Café")[1:-1] != train_vocabulary(
        [corpus], vocab_size=400).encode("Café")[1:-1]


def test_canonical_order(corpus):
    from bertdesk.pretraining.vocab import canonical_key

    vocab = train_vocabulary([corpus], vocab_size=250).vocabulary
    assert vocab[5:] == sorted(vocab[5:], key=canonical_key)
    chars = [t for t in vocab[5:] if len(t) == 1]
    assert vocab[5:5 + len(chars)] == sorted(chars)  # single characters come first
    assert all(t.startswith("##") for t in vocab[-3:])


def test_command_line_writes_a_loadable_vocab(corpus, tmp_path, capsys):
    out = tmp_path / "v" / "vocab.txt"
    assert cli_main(["vocab", "--corpus", str(corpus), "--vocab-size", "280",
                     "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "word pieces (uncased)" in printed and "[UNK]" in printed
    tok = BertTokenizer(out)
    assert tok.vocabulary[:5] == SPECIALS and tok.mask_token_id == 4
    folder = tmp_path / "tok"
    assert cli_main(["vocab", "--corpus", str(corpus), "--vocab-size", "280", "--cased",
                     "--output", str(folder)]) == 0
    again = BertTokenizer.from_pretrained(folder)
    assert not again.lowercase and again.vocabulary_size <= 280


def test_bad_corpus_files(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty.txt: no text"):
        train_vocabulary([empty], vocab_size=100)
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"hello\n\x00\x01\x02\xff\n")
    with pytest.raises(DataError, match=r"model.bin: line 2: a NUL byte"):
        train_vocabulary([binary], vocab_size=100)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: line 2: not UTF-8"):
        train_vocabulary([latin], vocab_size=100)
    with pytest.raises(DataError, match="missing.txt: corpus file not found"):
        train_vocabulary([tmp_path / "missing.txt"], vocab_size=100)
    assert cli_main(["vocab", "--corpus", str(empty), "--output", str(tmp_path / "v.txt")]) == 2
    assert "no text" in capsys.readouterr().err
    assert not (tmp_path / "v.txt").exists()


def test_a_vocab_txt_read_with_the_other_casing_is_refused(corpus, tmp_path, capsys):
    """A vocab.txt records no casing: a cased one read lower-cased left its
    capitalised pieces unused, an uncased one read --cased made capitals
    [UNK] (12.6% of a corpus's tokens), both without a word."""
    from bertdesk.pretraining.vocab import vocabulary_tokenizer

    cased, uncased = tmp_path / "cased.txt", tmp_path / "uncased.txt"
    for path, lowercase in ((cased, False), (uncased, True)):
        vocab = train_vocabulary([corpus], vocab_size=300, lowercase=lowercase).vocabulary
        path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    assert not vocabulary_tokenizer(cased, cased=True).lowercase
    assert vocabulary_tokenizer(uncased).lowercase
    with pytest.raises(DataError, match=r"cased.txt: \d+ of its \d+ pieces have capital letters, "
                                        r"so it is a cased vocabulary.*add --cased"):
        vocabulary_tokenizer(cased)
    with pytest.warns(UserWarning, match=r"uncased.txt: no piece has a capital letter: if it is "
                                         r"an uncased vocabulary, --cased makes every"):
        assert not vocabulary_tokenizer(uncased, cased=True).lowercase  # (a cased vocabulary
    # of lower-case text, French say, is one too: said, not refused)
    import bertdesk

    with pytest.warns(UserWarning, match="no piece has a capital letter"):  # bert-base-uncased's,
        vocabulary_tokenizer(bertdesk.bundled_checkpoint() / "vocab.txt", cased=True)  # with ℝ
    assert cli_main(["pretraining-data", "--corpus", str(corpus), "--vocab", str(cased),
                     "--output", str(tmp_path / "data")]) == 2
    assert "add --cased" in capsys.readouterr().err and not (tmp_path / "data").exists()
    chinese = tmp_path / "zh.txt"  # no letters with case: either setting reads it
    chinese.write_text("\n".join(SPECIALS + list("我们今天去北京")) + "\n", encoding="utf-8")
    assert vocabulary_tokenizer(chinese, cased=True).vocabulary_size == 12
