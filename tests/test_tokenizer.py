"""BertTokenizer gives exactly transformers' BertTokenizerFast ids, offsets and
word ids on the same vocabulary."""

import json

import numpy as np
import pytest

from bertdesk.tokenizer import BertTokenizer, read_vocab

pytestmark = pytest.mark.backend_neutral

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Héllo Wörld! Ça va? naïve café résumé Ångström",
    "我爱北京天安门，天安门上太阳升。",
    "今天天气很好 and the weather is nice 😀👍🏽",
    "Emoji only: 🤖🧠✨ and symbols ©®™ ≠ ≤ ∞",
    "don't stop-believing (42%) $3.50 #hashtag @user http://x.y/z?a=1",
    "Special tokens stay whole: [MASK] and [SEP] inside [CLS] text [UNK].",
    "control\tchars\u200bzero\u0000width\u00adsoft hyphen\r\nnew line",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ and ﬁ ligature, ß, İstanbul, ΑΘΗΝΑ",
    "pneumonoultramicroscopicsilicovolcanoconiosis " + "x" * 120,
    "",
    "   leading and trailing spaces   ",
    "日本語のテキスト、カタカナ、ひらがな。한국어 텍스트.",
    "Mixed: BERT模型在2018年发布, by Google AI Language.",
]
PAIRS = [
    "What is this?", "第二句话。", "Another sentence, quite a bit longer than the first one.",
    "", "x", "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "[MASK]?", "tab\tseparated", "ＡＢＣ", "short", "pair", "spaces ", "ok", "end",
]


@pytest.fixture(scope="module")
def vocab_file(minilm_folder):
    return minilm_folder / "vocab.txt"


@pytest.fixture(scope="module")
def reference(vocab_file):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)


def hf_encode(ref, texts, pairs=None, max_length=32):
    enc = ref(texts, pairs, max_length=max_length, truncation=True, padding="max_length",
              return_offsets_mapping=True, return_tensors="np")
    word_ids = np.array([[-1 if w is None else w for w in enc.word_ids(i)]
                         for i in range(len(texts))])
    return enc, word_ids


@pytest.mark.parametrize("max_length", [8, 32, 128])
def test_single_texts_match_transformers(reference, vocab_file, max_length):
    ours = BertTokenizer(vocab_file)(TEXTS, max_length=max_length, return_offsets=True,
                                     return_word_ids=True)
    enc, word_ids = hf_encode(reference, TEXTS, max_length=max_length)
    np.testing.assert_array_equal(ours["token_ids"], enc["input_ids"])
    np.testing.assert_array_equal(ours["segment_ids"], enc["token_type_ids"])
    np.testing.assert_array_equal(ours["padding_mask"], enc["attention_mask"])
    np.testing.assert_array_equal(ours["offsets"], enc["offset_mapping"])
    np.testing.assert_array_equal(ours["word_ids"], word_ids)


@pytest.mark.parametrize("max_length", [6, 12, 64])
def test_pairs_match_transformers_with_longest_first_truncation(reference, vocab_file,
                                                                max_length):
    ours = BertTokenizer(vocab_file)(TEXTS, PAIRS, max_length=max_length, return_offsets=True)
    enc, _ = hf_encode(reference, TEXTS, PAIRS, max_length=max_length)
    np.testing.assert_array_equal(ours["token_ids"], enc["input_ids"])
    np.testing.assert_array_equal(ours["segment_ids"], enc["token_type_ids"])
    np.testing.assert_array_equal(ours["padding_mask"], enc["attention_mask"])
    np.testing.assert_array_equal(ours["offsets"], enc["offset_mapping"])


def test_cased_vocabulary_matches_transformers(tmp_path, vocab_file):
    from transformers import BertTokenizerFast

    tokens = read_vocab(vocab_file) + ["Hello", "World", "Café", "BERT", "##T", "İ"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    ref = BertTokenizerFast(vocab=str(path), do_lower_case=False)
    ours = BertTokenizer(path, lowercase=False)
    texts = ["Hello World Café", "BERT and BERTT", "Héllo ÀB İstanbul", "hello world"]
    np.testing.assert_array_equal(ours(texts, max_length=16)["token_ids"],
                                  ref(texts, max_length=16, padding="max_length",
                                      truncation=True, return_tensors="np")["input_ids"])


def test_chinese_characters_are_one_token_each(vocab_file):
    tok = BertTokenizer(vocab_file)
    vocab = set(tok.vocabulary)
    text = "北京天安门大学"
    assert tok.tokenize(text) == [c if c in vocab else "[UNK]" for c in text]
    assert tok.tokenize("北京")[0] == "北"


def test_special_tokens_are_never_split(vocab_file):
    tok = BertTokenizer(vocab_file)
    assert tok.tokenize("a [MASK] b [SEP]") == ["a", "[MASK]", "b", "[SEP]"]


def test_padding_longest_and_batch_of_one(vocab_file):
    tok = BertTokenizer(vocab_file)
    out = tok(["a b c", "a"], max_length=64, padding="longest")
    assert out["token_ids"].shape == (2, 5)
    assert out["padding_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert tok("single text", max_length=8)["token_ids"].shape == (1, 8)
    assert all(v.dtype == np.int32 for v in out.values())


def test_offsets_point_into_the_text(vocab_file):
    tok = BertTokenizer(vocab_file)
    text = "Tokyo is in Japan; 東京 is Tokyo."
    out = tok([text], max_length=32, return_offsets=True)
    pieces = [text[s:e] for s, e in out["offsets"][0] if e > s]
    assert pieces[:4] == ["Tokyo", "is", "in", "Japan"]
    assert "東" in pieces and "京" in pieces


def test_save_and_from_pretrained_roundtrip(tmp_path, vocab_file):
    tok = BertTokenizer(vocab_file, lowercase=False)
    tok.save(tmp_path)
    again = BertTokenizer.from_pretrained(tmp_path)
    assert again.lowercase is False and again.vocabulary == tok.vocabulary
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["do_lower_case"] is False


def test_from_pretrained_reads_casing(minilm_folder, tmp_path):
    assert BertTokenizer.from_pretrained(minilm_folder).lowercase is True
    google = tmp_path / "cased_L-2_H-128_A-2"
    google.mkdir()
    (google / "vocab.txt").write_text((minilm_folder / "vocab.txt").read_text())
    assert BertTokenizer.from_pretrained(google).lowercase is False
    # a folder whose name does not say (a cased checkpoint read as uncased: its
    # capitalised pieces never reached): a vocabulary with capitals is cased
    cased, uncased = tmp_path / "ckpt", tmp_path / "other"
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for folder, words in ((cased, ["The", "the", "Paris", "##s", "a", "B"]),
                          (uncased, ["the", "paris", "##s", "a", "b", "c"])):
        folder.mkdir()
        (folder / "vocab.txt").write_text("\n".join(special + words) + "\n")
    assert BertTokenizer.from_pretrained(cased).lowercase is False
    assert BertTokenizer.from_pretrained(cased).encode("Paris")[1:-1] == [7]
    assert BertTokenizer.from_pretrained(uncased).lowercase is True
    # a tokenizer config without a casing: lower-cased, as transformers reads it
    (cased / "tokenizer_config.json").write_text('{"model_max_length": 512}')
    assert BertTokenizer.from_pretrained(cased).lowercase is True


def test_bad_inputs_have_clear_errors(tmp_path, vocab_file):
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        BertTokenizer(tmp_path / "vocab.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("hello\nworld\nhello\n[UNK]\n[CLS]\n[SEP]\n[PAD]\n")
    with pytest.raises(ValueError, match=r"bad.txt: line 3: token 'hello' already on line 1"):
        read_vocab(bad)
    nospecial = tmp_path / "nospecial.txt"
    nospecial.write_text("a\nb\n")
    with pytest.raises(ValueError, match="special tokens"):
        read_vocab(nospecial)
    tok = BertTokenizer(vocab_file)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tok(["ok", 3])
    with pytest.raises(ValueError, match="text_pairs has 1 items but texts has 2"):
        tok(["a", "b"], ["c"])


def test_many_sentences_encode_in_bulk(vocab_file):
    # 20k sentences through the compiled batch path (bench/ times 100k).
    tok = BertTokenizer(vocab_file)
    texts = [f"sentence number {i} with some words, 数字{i}" for i in range(20_000)]
    out = tok(texts, max_length=24)
    assert out["token_ids"].shape == (20_000, 24)
    assert (out["token_ids"][:, 0] == tok.cls_token_id).all()


def test_saved_settings_come_back(tmp_path):
    # accents kept, CJK characters not split: both read back from tokenizer_config.json
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "café", "cafe", "中文", "中", "文"]
    tokenizer = BertTokenizer(vocabulary, lowercase=True, strip_accents=False,
                              tokenize_chinese_chars=False)
    tokenizer.save(tmp_path)
    again = BertTokenizer.from_pretrained(tmp_path)
    assert (again.lowercase, again.strip_accents, again.tokenize_chinese_chars) == (
        True, False, False)
    batch = again(["Café 中文"], max_length=8)
    assert [vocabulary[i] for i in batch["token_ids"][0][1:3]] == ["café", "中文"]


def test_a_folder_transformers_5_saved_reads_its_tokenizer_json(tmp_path, minilm_folder):
    """transformers 5 saves `tokenizer.json` and `tokenizer_config.json`, no
    vocab.txt: the vocabulary comes from its WordPiece model, the settings
    from its normalizer (alone, or inside a Sequence) where the config has
    none."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(minilm_folder)).save_pretrained(str(tmp_path))
    assert not (tmp_path / "vocab.txt").exists()
    ours = BertTokenizer.from_pretrained(tmp_path)
    assert ours.vocabulary == read_vocab(minilm_folder / "vocab.txt")
    texts = ["Hello 中文 World, déjà vu!", "Zoë's café"]
    reference = AutoTokenizer.from_pretrained(str(tmp_path))
    assert [ours.encode(t) for t in texts] == [reference(t)["input_ids"] for t in texts]

    (tmp_path / "tokenizer_config.json").unlink()  # the normalizer's settings, then
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    bert = dict(data["normalizer"], lowercase=False, handle_chinese_chars=False)
    data["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}, bert]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    again = BertTokenizer.from_pretrained(tmp_path)
    assert (again.lowercase, again.tokenize_chinese_chars) == (False, False)

    data["model"]["vocab"]["[CLS]"] = 5  # two tokens under one id
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match="tokenizer.json: id 5 is both"):
        BertTokenizer.from_pretrained(tmp_path)


def test_word_spans_never_overlap(vocab_file):
    """A word's trailing marks (accents, enclosing marks) stop where the next
    word begins: a keycap's enclosing mark is a word of its own."""
    tok = BertTokenizer(vocab_file)
    for text in ["call #\ufe0f\u20e3 now", "a.\u0301b", "Zoe\u0301 x", "1\u20e3\u20e3 2"]:
        spans = tok.word_spans(text)
        assert all(end <= following for (_, end), (following, _) in zip(spans, spans[1:])), \
            (text, spans)
    assert tok.word_spans("Zoe\u0301 x") == [(0, 4), (5, 6)]  # the accent stays its word's


def test_lone_surrogates_read_as_replacement_characters(vocab_file):
    """Half an emoji from a JSON escape: the Rust tokenizer refuses the
    string; bertdesk reads the surrogate as U+FFFD (dropped as BERT's text
    cleaning drops it), offsets kept."""
    tok = BertTokenizer(vocab_file)
    text = "cafe \ud83d end"
    assert tok.tokenize(text) == ["cafe", "end"]
    out = tok([text, "x"], ["y \udc00", "z"], max_length=16, return_offsets=True)
    clean = tok(["cafe  end", "x"], ["y ", "z"], max_length=16)
    np.testing.assert_array_equal(out["token_ids"], clean["token_ids"])
    assert tuple(out["offsets"][0, 2]) == (7, 10)  # "end" where it is in the text
    assert tok.encode_words([["a", "\ud83d", "b"]])[0][2].tolist() == [-1, 0, 2, -1]
