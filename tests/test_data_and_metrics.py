"""Tables, batching and metrics (no backend math)."""

import hashlib

import numpy as np
import pytest

from bertdesk.data.tables import DataError, load_classification, read_table, stratified_split
from bertdesk.training import metrics as M

pytestmark = pytest.mark.backend_neutral


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet", ".xlsx"])
def test_every_table_format_reads_the_same(tmp_path, suffix):
    import pandas as pd

    df = pd.DataFrame({"text": ["good film", "NA", "bad \"quoted\" film"], "label": ["1", "0", "0"]})
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        write(path, "text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in zip(df.text, df.label)))
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        df.to_json(path, orient="records")
    elif suffix == ".parquet":
        pass
        df.to_parquet(path)
    else:
        pass
        df.to_excel(path, index=False)
    data = load_classification(path)
    assert data.texts == ["good film", "NA", 'bad "quoted" film']  # "NA" stays text
    assert data.labels == ["1", "0", "0"]


def test_bad_inputs_name_file_row_and_problem(tmp_path):
    p = write(tmp_path / "a.csv", "sentence,label\nhi,1\n")
    with pytest.raises(DataError, match=r"a.csv: no text column 'text'; columns are: 'sentence', 'label'"):
        load_classification(p)
    p = write(tmp_path / "b.csv", "text,label\nhi,1\n  ,0\n")
    with pytest.raises(DataError, match=r"b.csv: row 2: empty text in column 'text'"):
        load_classification(p)
    p = write(tmp_path / "c.csv", "text,label\nhi,1\nho,\n")
    with pytest.raises(DataError, match=r"c.csv: row 2: missing label in column 'label'"):
        load_classification(p)
    p = write(tmp_path / "d.csv", "text,label\nhi,1\nh\xe9,0\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"d.csv: not UTF-8 text"):
        load_classification(p)
    p = write(tmp_path / "e.csv", "a,b,label\nhi,there,1\nho,,0\n")
    with pytest.raises(DataError, match=r"e.csv: row 2: empty text pair in column 'b'"):
        load_classification(p, text_column="a", text_pair_column="b")
    p = write(tmp_path / "f.csv", "text,label\nhi,high\n")
    with pytest.raises(DataError, match=r"f.csv: row 1: label 'high' in column 'label' is not a finite number"):
        load_classification(p, problem_type="regression")
    with pytest.raises(DataError, match=r"g.docx: unknown table format"):
        read_table(write(tmp_path / "g.docx", "x"))
    with pytest.raises(DataError, match=r"missing.csv: file not found"):
        read_table(tmp_path / "missing.csv")


@pytest.mark.parametrize("value", ["NaN", "inf", "-Infinity"])
def test_regression_targets_must_be_finite(tmp_path, value):
    # a NaN target trains every weight to NaN and writes invalid JSON metrics
    p = write(tmp_path / "r.csv", f"text,label\nhi,1.5\nho,{value}\n")
    with pytest.raises(DataError, match=rf"r.csv: row 2: label '{value}' in column 'label' "
                                        r"is not a finite number"):
        load_classification(p, problem_type="regression")
    from bertdesk.data.tables import check_rows

    assert check_rows(read_table(p), problem_type="regression") == [
        (2, f"label {value!r} in column 'label' is not a finite number")]
    assert load_classification(write(tmp_path / "ok.csv", "text,label\nhi,1e3\n"),
                               problem_type="regression").labels == [1000.0]


def test_json_lines_errors_name_the_line(tmp_path):
    good = '{"text": "hi", "label": "1"}\n'
    p = write(tmp_path / "a.jsonl", good + '{"text": "ho", "label": "0"\n' + good)
    with pytest.raises(DataError) as e:
        read_table(p)
    assert str(e.value).startswith(f"{p}: line 2: not valid JSON ("), str(e.value)
    p = write(tmp_path / "b.jsonl", good + "\n" + '["ho", "0"]\n')  # a blank line is skipped
    with pytest.raises(DataError) as e:
        read_table(p)
    assert str(e.value).startswith(f"{p}: line 3: expected a JSON object"), str(e.value)
    # a raw tab inside a string (exported files have them; pandas read them)
    p = write(tmp_path / "t.jsonl", '{"text": "a\tb", "label": "1"}\n')
    assert load_classification(p).texts == ["a\tb"]
    # a byte-order mark (as Windows editors write) is read as CSV files' is
    p = write(tmp_path / "c.jsonl", "\ufeff" + good + '{"text": "ho", "label": "0"}\n')
    data = load_classification(p)
    assert data.texts == ["hi", "ho"] and data.labels == ["1", "0"]


def test_json_cells_that_are_not_text_are_refused(tmp_path):
    p = write(tmp_path / "a.jsonl", '{"text": "hi", "label": "1"}\n{"text": ["x", "y"], "label": "0"}\n')
    with pytest.raises(DataError, match=r"a.jsonl: row 2: column 'text' holds a JSON list, "
                                        r"expected text"):
        load_classification(p)
    p = write(tmp_path / "b.jsonl", '{"text": "hi", "label": {"y": 1}}\n')
    with pytest.raises(DataError, match=r"b.jsonl: row 1: label .* is a JSON object"):
        load_classification(p)
    p = write(tmp_path / "c.jsonl", '{"text": "hi", "label": ["a", "b"]}\n')
    with pytest.raises(DataError, match=r"c.jsonl: row 1: .*lists are for --problem-type multi_label"):
        load_classification(p)
    assert load_classification(p, problem_type="multi_label").labels == [["a", "b"]]
    # the desktop app's row check (which can drop bad rows) flags the same rows
    from bertdesk.data.tables import check_rows

    mixed = write(tmp_path / "d.jsonl", '{"text": "hi", "label": "1"}\n{"text": ["x"], "label": "0"}\n'
                  '{"text": "ho", "label": {"y": 1}}\n{"text": "ha", "label": ["a"]}\n')
    assert check_rows(read_table(mixed)) == [
        (2, "column 'text' holds a JSON list, expected text"),
        (3, "label {'y': 1} in column 'label' is a JSON object"),
        (4, "label ['a'] in column 'label' is a JSON list (lists are for --problem-type "
            "multi_label)")]


def test_undecodable_byte_is_placed_by_line_and_file_offset(tmp_path):
    # pandas reads in chunks, and its position is inside a chunk: the error
    # gives the line and the byte offset in the file instead
    lines = ["text,label\n"] + [f"sentence number {i},1\n" for i in range(20000)]
    body = "".join(lines).encode()
    p = write(tmp_path / "big.csv", body + b"caf\xe9,0\n")
    with pytest.raises(DataError, match=rf"big.csv: not UTF-8 text \(line {len(lines) + 1}: "
                                        rf"undecodable byte 0xe9 at byte {len(body) + 3} of the file"):
        read_table(p)


def test_tab_separated_file_named_csv_gets_a_hint(tmp_path):
    p = write(tmp_path / "a.csv", "text\tlabel\nhi\t1\n")
    with pytest.raises(DataError, match=r"a.csv: no text column 'text'; columns are: "
                                        r"'text\\tlabel'; the header holds tabs: .*ends in .tsv"):
        load_classification(p)
    tsv = write(tmp_path / "a.tsv", "text\tlabel\nhi\t1\n")
    assert load_classification(tsv).texts == ["hi"]


def test_repeated_column_names_are_refused(tmp_path):
    p = write(tmp_path / "a.csv", "text,label, label\nhi,1,2\n")
    with pytest.raises(DataError, match=r"a.csv: column names repeated .*'label'"):
        read_table(p)
    # the same name exactly: pandas renames the second "text.1" as it reads
    for name, text in (("b.csv", "text,text,label\nhi,ho,1\n"),
                       ("b.tsv", "text\ttext\tlabel\nhi\tho\t1\n")):
        with pytest.raises(DataError, match=rf"{name}: column names repeated .*'text'"):
            read_table(write(tmp_path / name, text))
    import pandas as pd

    excel = tmp_path / "b.xlsx"
    pd.DataFrame([["hi", "ho", "1"]], columns=["text", "text ", "label"]).to_excel(
        excel, index=False)
    with pytest.raises(DataError, match=r"b.xlsx: column names repeated .*'text'"):
        read_table(excel)


def test_a_row_with_a_field_more_than_the_header_is_refused(tmp_path):
    # every row one field longer: pandas would take the first field as an
    # index and shift the rest, reading texts " really" and " awful" silently
    p = write(tmp_path / "a.csv", "text,label\nGreat, really,1\n\nBad, awful,0\n")
    with pytest.raises(DataError, match=r"a.csv: row 1: 3 fields, the header has 2; a text "
                                        r"with commas needs quotes"):
        read_table(p)
    p = write(tmp_path / "a.tsv", "text\tlabel\nok\tfine\t1\n")
    with pytest.raises(DataError, match=r"a.tsv: row 1: 3 fields, the header has 2"):
        read_table(p)
    quoted = write(tmp_path / "q.csv", 'text,label\n"Great, really",1\n"Bad,\nawful",0\n')
    assert load_classification(quoted).texts == ["Great, really", "Bad,\nawful"]


def test_parquet_lists_and_missing_values_read_as_json_does(tmp_path):
    import pandas as pd

    path = tmp_path / "go.parquet"
    pd.DataFrame({"text": ["a b", "c d", "e f"], "label": [[2, 27], [27], [3]],
                  "score": pd.array([1, None, 3], dtype="Int64")}).to_parquet(path)
    df = read_table(path)
    assert df["label"].tolist() == [[2, 27], [27], [3]] and df["score"].tolist() == [1, None, 3]
    assert load_classification(path, problem_type="multi_label").labels == [
        ["2", "27"], ["27"], ["3"]]
    with pytest.raises(DataError, match=r"go.parquet: row 2: missing label in column 'score'"):
        load_classification(path, label_column="score")  # not the label "<NA>"


def test_user_files_are_never_modified(tmp_path):
    p = write(tmp_path / "data.csv", "text,label\nhi,1\nho,0\n")
    before = hashlib.sha256(p.read_bytes()).hexdigest()
    load_classification(p)
    assert hashlib.sha256(p.read_bytes()).hexdigest() == before


def test_multi_label_and_label_normalisation(tmp_path):
    p = write(tmp_path / "m.csv", 'text,label\na,"x, y"\nb,"[""y""]"\nc,z\n')
    assert load_classification(p, problem_type="multi_label").labels == [["x", "y"], ["y"], ["z"]]
    p = write(tmp_path / "n.csv", "text,label\na,1.0\nb,0\n")
    assert load_classification(p).labels == ["1", "0"]
    # multi-label items read as single labels do: a model trained on "1,2" knows [1.0, 2.0]
    p = write(tmp_path / "o.jsonl", '{"text": "a", "label": [1.0, 2]}\n'
                                    '{"text": "b", "label": "[3.0, \\"x\\"]"}\n')
    q = write(tmp_path / "o.csv", 'text,label\na,"1,2.0"\nb,"3, x"\n')
    for path in (p, q):
        assert load_classification(path, problem_type="multi_label").labels == [
            ["1", "2"], ["3", "x"]], path


def test_stratified_split_keeps_proportions():
    labels = ["a"] * 90 + ["b"] * 10
    train, val = stratified_split(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert sum(labels[i] == "b" for i in val) == 2 and len(val) == 20
    assert stratified_split(labels, 0.2, seed=3) == (train, val)


def test_stratified_split_holds_out_the_fraction_asked():
    """Rare multi-label combinations each gave one example of two to the
    held-out part (16% held out where 10% was asked); rare single labels
    still keep one in each part, and a label's only example trains."""
    rng = np.random.default_rng(0)
    for n, k in ((300, 6), (5000, 20)):
        labels = [sorted(set(rng.choice(k, size=rng.integers(1, 4)).tolist())) for _ in range(n)]
        train, val = stratified_split(labels, 0.1, seed=1)
        assert sorted(train + val) == list(range(n)) and len(val) == round(0.1 * n)
    # a label whose one row is a combination of its own: never held out (the run failed
    # for one seed in ten, the label unknown to a head learnt from the training part)
    pairs = [[x, y] for x in "abcdefg" for y in "abcdefg" if x < y] + [["a", "z"]]
    for seed in range(30):
        train, val = stratified_split(pairs, 0.1, seed=seed)
        assert {x for i in val for x in pairs[i]} <= {x for i in train for x in pairs[i]}
        assert len(pairs) - 1 in train and len(val) >= 1
    labels = ["a"] * 95 + ["b", "b", "c"] + ["d"] * 2
    train, val = stratified_split(labels, 0.1, seed=2)
    assert len(val) == 11  # 9 of a's 95, and one of b's and d's two: past 10, each label scored
    assert {labels[i] for i in val} == {"a", "b", "d"} and {labels[i] for i in train} == set("abcd")


# === Batching ===
def encodings(lengths):
    return [(np.arange(1, n + 1, dtype=np.int32), np.zeros(n, np.int32)) for n in lengths]


def test_dynamic_padding_and_bucketing():
    from bertdesk.data.batching import PaddedBatches

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1000)
    y = np.arange(1000)
    # the short batch, and the limit on lengths: tests/test_full_batches.py
    kw = {"batch_size": 16, "full_batches": False, "max_shapes": 0}
    bucketed = PaddedBatches(encodings(lengths), y, shuffle=True, seed=1, **kw)
    plain = PaddedBatches(encodings(lengths), y, shuffle=True, seed=1, bucket=False, **kw)
    fixed = PaddedBatches(encodings(lengths), y, fixed_length=128, bucket=False, **kw)
    assert bucketed.padded_tokens() < plain.padded_tokens() < fixed.padded_tokens()
    seen = []
    for i in range(len(bucketed)):
        x, yb = bucketed[i]
        assert x["token_ids"].shape[1] % 8 == 0
        assert x["token_ids"].shape[1] - x["padding_mask"].sum(1).max() < 8
        np.testing.assert_array_equal(x["padding_mask"].sum(1), lengths[yb])
        seen.extend(yb.tolist())
    assert sorted(seen) == list(range(1000))  # every example exactly once
    first = [b.tolist() for b in bucketed.batches]
    bucketed.on_epoch_end()
    assert [b.tolist() for b in bucketed.batches] != first  # reshuffled
    bucketed.set_epoch(0)
    assert [b.tolist() for b in bucketed.batches] == first  # deterministic per epoch


def test_the_short_batch_of_a_bucketed_epoch_is_random_rows():
    """Sorted by length, the short batch was always the window's shortest
    rows, the same ones every epoch, each weighing batch_size / its rows
    times another example; now its rows are drawn at random."""
    from bertdesk.data.batching import PaddedBatches

    rng = np.random.default_rng(0)
    lengths = rng.permutation(70) + 3  # distinct: the 6 shortest are known
    data = PaddedBatches(encodings(lengths), np.arange(70), batch_size=16, shuffle=True,
                         full_batches=False, max_shapes=0)
    shortest = set(np.argsort(lengths)[:6].tolist())
    shorts = []
    for epoch in range(6):
        data.set_epoch(epoch)
        rows = [b for b in data.batches if len(b) < 16]
        assert len(rows) == 1 and len(rows[0]) == 6
        assert sorted(np.concatenate(data.batches).tolist()) == list(range(70))
        full = [b for b in data.batches if len(b) == 16]  # still sorted by length
        assert sum(lengths[b].max() - lengths[b].min() for b in full) < 70
        shorts.append(set(rows[0].tolist()))
    assert len({frozenset(s) for s in shorts}) == 6 and shorts[0] != shortest


# === Metrics against scikit-learn / scipy ===
def test_classification_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    pred[:100] = gold[:100]
    m = M.classification_metrics(gold, pred, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    p, r, f, s = precision_recall_fscore_support(gold, pred)
    assert [c["f1"] for c in m["per_class"]] == pytest.approx(f.tolist())
    assert [c["support"] for c in m["per_class"]] == s.tolist()
    assert np.asarray(m["confusion_matrix"]).sum() == 300


def test_hand_worked_example():
    # gold a a b b c, pred a b b b a: a P=1/2 R=1/2; b P=2/3 R=1; c P=0 R=0
    m = M.classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0) / 3)


def test_multilabel_and_regression_metrics():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    gold, pred = rng.random((50, 3)) > 0.5, rng.random((50, 3)) > 0.5
    m = M.multilabel_metrics(gold, pred, ["x", "y", "z"])
    assert m["micro_f1"] == pytest.approx(f1_score(gold, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    a = rng.normal(size=40)
    b = np.round(a + rng.normal(size=40), 1)  # with ties
    r = M.regression_metrics(a, b)
    assert r["pearson"] == pytest.approx(pearsonr(a, b)[0])
    assert r["spearman"] == pytest.approx(spearmanr(a, b)[0])


def test_matthews_and_binary_f1_match_sklearn():
    from sklearn.metrics import f1_score, matthews_corrcoef

    rng = np.random.default_rng(2)
    for classes in (2, 3, 5):
        for _ in range(50):
            n = int(rng.integers(1, 60))
            gold, pred = rng.integers(0, classes, n), rng.integers(0, classes, n)
            pred[: n // 2] = gold[: n // 2]
            if rng.random() < 0.2:
                pred[:] = pred[0]  # one class predicted: MCC undefined, 0.0 as sklearn
            m = M.classification_metrics(gold, pred, [str(i) for i in range(classes)])
            assert m["mcc"] == pytest.approx(matthews_corrcoef(gold, pred), abs=1e-12)
            if classes == 2:  # GLUE's MRPC/QQP F1: the positive (second) label's
                assert m["f1"] == pytest.approx(f1_score(gold, pred, zero_division=0))
            else:
                assert "f1" not in m


@pytest.mark.parametrize("pred", [[2.5, 2.5, 2.5, 2.5], [np.nan] * 4, [1.1, 2.2, np.nan, 3.9],
                                  [1.1, 2.2, np.inf, 3.9], [4.0, 3.0, 2.0, 1.0],
                                  [1e200, 2e200, 3e200, 4.5e200]])
def test_correlations_are_nan_where_scipy_says_undefined(pred):
    """A model predicting one value, or NaN, reads as undefined (NaN), not as
    uncorrelated (0.0) or, for Spearman's ranks of NaNs, as the rows' order."""
    import warnings

    from scipy.stats import pearsonr, spearmanr

    gold = np.array([1.0, 2.0, 3.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pearsonr(gold, pred)[0], spearmanr(gold, pred)[0]
    r = M.regression_metrics(gold, pred)
    np.testing.assert_allclose([r["pearson"], r["spearman"]], expected, atol=1e-12)


def test_a_nan_monitored_value_never_blocks_later_improvements():
    from bertdesk.training.callbacks import _improves

    nan = float("nan")
    assert _improves(nan, None, "max")  # the first epoch is the best so far
    assert _improves(0.1, nan, "max") and _improves(5.0, nan, "min")
    assert not _improves(nan, 0.1, "max") and not _improves(nan, 0.1, "min")
    assert not _improves(None, None, "max")
    assert _improves(nan, nan, "max") and _improves(nan, nan, "min")  # the later, more trained
    assert _improves(0.2, 0.1, "max") and not _improves(0.2, 0.1, "min")
