"""Tables of examples (CSV, TSV, JSON lines, JSON, Parquet, Excel) read with
pandas, checked row by row. The user's files are only ever read."""

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

READERS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "json",
           ".parquet": "parquet", ".xlsx": "excel", ".xls": "excel"}
PROBLEM_TYPES = ("single_label", "multi_label", "regression")


class DataError(ValueError):
    """Bad input data; the message names the file, the row and the problem."""


def read_table(path):
    """A pandas DataFrame of strings (no 'NA' -> NaN guessing) from `path`."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown table format {path.suffix!r}; expected one of "
                        f"{', '.join(sorted(READERS))}")
    text_opts = dict(dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    try:
        if kind == "csv":
            df = pd.read_csv(path, **text_opts)
        elif kind == "tsv":
            # GLUE-style TSV: tabs only, quotes are text.
            df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, **text_opts)
        elif kind == "jsonl":
            df = pd.DataFrame(_json_lines(path))
        elif kind == "json":
            df = pd.read_json(path, dtype=False, encoding="utf-8-sig")
        elif kind == "parquet":
            df = _plain_cells(pd.read_parquet(path))
        else:
            df = pd.read_excel(path, dtype=str, keep_default_na=False, na_filter=False)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text ({first_undecodable(path)})") from None
    except DataError:
        raise
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read as {kind}: {str(e).splitlines()[0]}") from None
    except ImportError as e:
        raise DataError(f"{path}: reading {kind} needs an optional package ({e})") from None
    if len(df) == 0:
        raise DataError(f"{path}: no rows")
    if kind in ("csv", "tsv") and not isinstance(df.index, pd.RangeIndex):
        # pandas takes a row's extra field as an index column and shifts the
        # row's cells one column to the right, silently
        raise DataError(f"{path}: {_first_long_row(path, kind)}")
    # the header as written: pandas renames a repeated name ("text", "text.1")
    header = _header(path, kind) if kind in ("csv", "tsv", "excel") else list(df.columns)
    names = [str(c).strip() for c in header]
    repeated = sorted({c for c in names if names.count(c) > 1})
    df.columns = [str(c).strip() for c in df.columns]
    if repeated:
        raise DataError(f"{path}: column names repeated (after trimming spaces): "
                        f"{', '.join(map(repr, repeated))}; every column needs its own name")
    df.attrs["path"] = str(path)
    return df


def _plain_cells(df):
    """A Parquet table's cells as the JSON readers give them: a list column's
    cells (numpy arrays) as lists, a missing value (`None`, NaN, pandas'
    `NA` of its nullable columns) as None, numpy scalars as Python ones."""
    import pandas as pd

    def plain(value):
        if isinstance(value, np.ndarray):
            return [plain(v) for v in value.tolist()]
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return None
        return value.item() if isinstance(value, np.generic) else value

    return pd.DataFrame({i: [plain(v) for v in df[c].astype(object)]
                         for i, c in enumerate(df.columns)}, dtype=object).set_axis(
        list(df.columns), axis=1)


def _csv_rows(path, kind):
    """The rows of a CSV or TSV file as lists of fields (csv's own parser:
    quoted fields may hold newlines)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        if kind == "tsv":
            yield from csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            yield from csv.reader(f)


def _header(path, kind):
    if kind == "excel":
        import pandas as pd

        return list(pd.read_excel(path, header=None, nrows=1, dtype=str).iloc[0].fillna(""))
    return next(_csv_rows(path, kind), [])


def _first_long_row(path, kind):
    """Which row has more fields than the header, in words."""
    rows = _csv_rows(path, kind)
    width = len(next(rows, []))
    number = 0
    for fields in rows:
        if not fields:  # a blank line: pandas skips it
            continue
        number += 1
        if len(fields) > width:
            hint = ("; a text with commas needs quotes around it" if kind == "csv"
                    else "; a text with tabs needs them removed")
            return (f"row {number}: {len(fields)} fields, the header has {width}{hint}")
    return f"a row has more fields than the header's {width}"


def _json_lines(path):
    """The objects of a JSON-lines file; a bad line is named by its number."""
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, strict=False)  # raw tabs in strings, as pandas
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {number}: not valid JSON ({e.msg}, column "
                                f"{e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {number}: expected a JSON object "
                                f"({{\"column\": value, ...}}), got {type(record).__name__}")
            records.append(record)
    return records


def first_undecodable(path):
    """Where the first byte that is not UTF-8 is: line and byte offset in the file."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f"line {number}: undecodable byte 0x{line[e.start]:02x} at byte "
                        f"{offset + e.start} of the file; save it as UTF-8")
            offset += len(line)
    return "undecodable bytes; save it as UTF-8"


def _column(df, name, path, role):
    if name not in df.columns:
        hint = ("; the header holds tabs: a tab-separated file is read as such when its name "
                "ends in .tsv" if any("\t" in c for c in df.columns) else "")
        raise DataError(f"{path}: no {role} column {name!r}; columns are: "
                        f"{', '.join(map(repr, df.columns))}{hint}")
    return df[name].tolist()


def _cell_text(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def _json_value_problem(value, column, role, problem_type=None):
    """What is wrong with a JSON list or object in a cell (None if nothing):
    a text cell holds text, a label cell a string or number (a list for
    multi-label)."""
    if not isinstance(value, (list, dict)):
        return None
    kind = "list" if isinstance(value, list) else "object"
    if role == "text":
        return f"column {column!r} holds a JSON {kind}, expected text"
    if kind == "list" and problem_type == "multi_label":
        return None
    hint = " (lists are for --problem-type multi_label)" if kind == "list" else ""
    return f"label {value!r} in column {column!r} is a JSON {kind}{hint}"


def _texts(values, path, column):
    """A text column's cells as strings; JSON lists and objects are not text."""
    for i, v in enumerate(values, 1):
        problem = _json_value_problem(v, column, "text")
        if problem:
            raise DataError(f"{path}: row {i}: {problem}")
    return [_cell_text(v) for v in values]


def _number(cell):
    """A regression target: a finite float, or None."""
    try:
        value = float(cell)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


@dataclass
class ClassificationData:
    """Texts (and pairs) with raw labels: strings, lists of strings
    (multi-label) or floats (regression)."""

    texts: list
    pairs: list | None
    labels: list | None
    source: str = ""
    rows: list = field(default_factory=list)  # 1-based data row of each example
    label_separator: str = ","  # a multi-label cell's, as read (predictions join with it)

    def __len__(self):
        return len(self.texts)


def check_rows(df, text_column="text", text_pair_column=None, label_column="label",
               problem_type="single_label", require_labels=True):
    """Every bad row of a classification table, as `(row, problem)` with
    1-based data rows, in row order. Missing columns raise DataError (they
    are not a row's fault)."""
    path = df.attrs.get("path", "table")
    texts = _column(df, text_column, path, "text")
    pairs = _column(df, text_pair_column, path, "text pair") if text_pair_column else None
    labels = None
    if require_labels or label_column in df.columns:
        labels = _column(df, label_column, path, "label")
    problems = []
    for i, text in enumerate(texts):
        row = i + 1
        problem = (_json_value_problem(text, text_column, "text") or
                   (pairs is not None and _json_value_problem(pairs[i], text_pair_column, "text")))
        if problem:
            problems.append((row, problem))
        elif not _cell_text(text).strip():
            problems.append((row, f"empty text in column {text_column!r}"))
        elif pairs is not None and not _cell_text(pairs[i]).strip():
            problems.append((row, f"empty text pair in column {text_pair_column!r} "
                                  "(every row needs both texts)"))
        elif labels is not None:
            problem = _label_problem(labels[i], label_column, problem_type)
            if problem and not (not require_labels and problem.startswith("missing label")):
                problems.append((row, problem))
    return problems


def _label_problem(value, label_column, problem_type):
    problem = _json_value_problem(value, label_column, "label", problem_type)
    if problem:
        return problem
    if isinstance(value, list):
        return None if value else f"missing label in column {label_column!r}"
    cell = _cell_text(value).strip()
    if cell == "":
        return f"missing label in column {label_column!r}"
    if problem_type == "regression":
        if _number(cell) is None:
            return f"label {cell!r} in column {label_column!r} is not a finite number"
    elif problem_type == "multi_label" and cell.startswith("["):
        try:
            json.loads(cell)
        except json.JSONDecodeError:
            return f"label {cell!r} is not a JSON list"
    return None


def load_classification(path, text_column="text", text_pair_column=None, label_column="label",
                        problem_type="single_label", label_separator=",", require_labels=True):
    """Read and check a classification table. Every bad row is reported
    with its row number (1 = first data row). Without `require_labels`
    (prediction) the label column may be missing, and an empty label cell
    reads as None."""
    if problem_type not in PROBLEM_TYPES:
        raise DataError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
    df = read_table(path)
    texts = _texts(_column(df, text_column, path, "text"), path, text_column)
    pairs = None
    if text_pair_column:
        pairs = _texts(_column(df, text_pair_column, path, "text pair"), path, text_pair_column)
    labels = None
    has_labels = label_column in df.columns
    if require_labels or has_labels:
        raw = _column(df, label_column, path, "label")
        labels = []
        for i, v in enumerate(raw, 1):
            cell = _cell_text(v).strip() if not isinstance(v, list) else v
            if cell == "" or (cell == [] and problem_type == "multi_label"):
                if not require_labels:  # prediction: a row without its label is still scored
                    labels.append(None)
                    continue
                raise DataError(f"{path}: row {i}: missing label in column {label_column!r}")
            problem = _json_value_problem(v, label_column, "label", problem_type)
            if problem:
                raise DataError(f"{path}: row {i}: {problem}")
            if problem_type == "regression":
                if _number(cell) is None:
                    raise DataError(f"{path}: row {i}: label {cell!r} in column "
                                    f"{label_column!r} is not a finite number")
                labels.append(_number(cell))
            elif problem_type == "multi_label":
                try:
                    labels.append(multi_label_texts(cell, label_separator))
                except json.JSONDecodeError:
                    raise DataError(f"{path}: row {i}: label {cell!r} is not a JSON list") from None
            else:
                labels.append(label_text(cell))
    for i, t in enumerate(texts, 1):
        if not t.strip():
            raise DataError(f"{path}: row {i}: empty text in column {text_column!r}")
        if pairs is not None and not pairs[i - 1].strip():
            raise DataError(f"{path}: row {i}: empty text pair in column {text_pair_column!r} "
                            "(every row needs both texts)")
    return ClassificationData(texts, pairs, labels, str(path), list(range(1, len(texts) + 1)),
                              label_separator)


def multi_label_texts(cell, separator=","):
    """The labels of a multi-label cell, sorted, each read as `label_text`
    reads a single label (1.0 from JSON or a float column is 1): a list, a
    JSON list written as text (json.JSONDecodeError where it is not one),
    or labels joined by `separator`."""
    if isinstance(cell, list):
        items = cell
    elif cell.startswith("["):
        items = json.loads(cell)
    else:
        items = cell.split(separator)
    return sorted({x for x in map(label_text, items) if x})


def label_text(value):
    """A label as the text a model knows it by; '1.0' from a float column
    reads as '1'."""
    s = str(value).strip()
    try:
        f = float(s)
        if f.is_integer() and ("." in s or "e" in s.lower()):
            return str(int(f))
    except ValueError:
        pass
    return s


def stratified_split(labels, fraction=0.1, seed=0):
    """(train_indices, validation_indices), each label (multi-label: each
    combination of labels) split in proportion: `fraction` of the examples
    held out in all, each stratum's share rounded down and the examples
    left to hold out given to the strata with the largest remainders.
    Single labels with two or more examples keep at least one in each part
    (so every label is scored), even past `fraction`; label combinations do
    not (one of each pair of a rare combination took 14-16% of multi-label
    data where 10% was asked). Either way every label of a held-out example
    is one some training example has (the labels are learnt from the
    training part): an example whose label would be held out alone trains."""
    rng = np.random.default_rng(seed)
    keys = [tuple(l) if isinstance(l, list) else l for l in labels]
    by_label = {}
    for i, k in enumerate(keys):
        by_label.setdefault(k if not isinstance(k, float) else 0, []).append(i)
    strata = [np.array(by_label[k]) for k in sorted(by_label, key=str)]
    sizes = np.array([len(s) for s in strata])
    exact = sizes * fraction
    n_val = np.floor(exact).astype(int)
    combinations = any(isinstance(k, tuple) for k in by_label)
    if fraction > 0 and not combinations:
        n_val = np.where(sizes >= 2, np.maximum(n_val, 1), n_val)
    left = int(round(len(keys) * fraction)) - int(n_val.sum())
    if left > 0:  # largest remainders first, ties at random; a label keeps one to train on
        room = n_val < (sizes if combinations else sizes - 1)
        remainders = np.where(room, exact - n_val, -1.0)
        for s in np.lexsort((rng.random(len(strata)), -remainders))[:left]:
            if remainders[s] >= 0:
                n_val[s] += 1
    train, val = [], []
    for idx, k in zip(strata, n_val):
        rng.shuffle(idx)
        val.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    if combinations:
        def names(i):
            return set(keys[i]) if isinstance(keys[i], tuple) else {keys[i]}

        trained = set().union(*(names(i) for i in train))
        for i in list(val):
            if names(i) - trained:
                val.remove(i)
                train.append(i)
                trained |= names(i)
    return sorted(train), sorted(val)


def subset(data, indices):
    pick = lambda xs: None if xs is None else [xs[i] for i in indices]  # noqa: E731
    return ClassificationData(pick(data.texts), pick(data.pairs), pick(data.labels),
                              data.source, pick(data.rows), data.label_separator)
