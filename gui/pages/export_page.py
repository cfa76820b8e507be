"""Export: copy a run's model folder, write it as a transformers task model,
save its validation predictions (CSV or JSON lines) and write a report
(HTML, or PDF through Qt's printer).

The writing lives in plain functions (`copy_model`, `export_transformers`,
`export_predictions`, `export_report_html`, `export_report_pdf`) that the
buttons call after a
file dialog and that tests call directly. Files are written atomically
(a temporary file in the same folder, then `os.replace`); every string that
comes from the data or the run is `html.escape`d in the report."""

import html
import os
import shutil
import tempfile
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QFileDialog, QGridLayout, QLabel, QMessageBox, QPushButton,
                               QVBoxLayout, QWidget)

from bertdesk_gui.pages.evaluate_page import (COUNTS, LOGITS, SCALARS, breakdown, format_value,
                                              metric_name, no_results_message, read_results,
                                              run_labels)
from bertdesk_gui.pages.inspect_page import read_predictions

PREDICTION_TYPES = {".csv": "CSV", ".tsv": "TSV", ".jsonl": "JSON lines"}
CURVE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


class ExportError(ValueError):
    """An export that cannot be done; the message says why, for the user."""


# === Plain functions ===

def copy_model(run, target):
    """Copy `<output>/model` to `target`, a new or empty folder; the copy is
    assembled beside it and moved in, so `target` is never half-written."""
    source, target = _model_and_target(run, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial",
                                    dir=target.parent))
    try:
        shutil.copytree(source, staging / "model")
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def export_transformers(run, target):
    """Write `<output>/model` into `target` (a new or empty folder) as the
    transformers task model of its task (`bertdesk convert --to hf`): head,
    labels and tokenizer, for `AutoModelFor...` and `pipeline(...)`."""
    from bertdesk.io import convert
    from bertdesk.lean_import import import_keras_lean

    source, target = _model_and_target(run, target)
    import_keras_lean()  # the app's first Keras, without JAX and scikit-learn
    return convert(source, target, to="hf")


def _model_and_target(run, target):
    """The run's model folder and `target` as a path, checked: the model was
    saved, and `target` is a new or empty folder."""
    source = Path(run["output"]) / "model"
    if not (source / "bertdesk.json").is_file():
        raise ExportError(f"run {run['id']} has no saved model ({source})")
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"{target} is not empty; choose a new or empty folder")
    return source, target


def prediction_records(run):
    """The run's validation predictions as dicts with numbers, booleans and
    texts typed back (the CSV holds strings)."""
    frame = read_predictions(run)
    if frame is None:
        raise ExportError(f"run {run['id']} has no validation predictions")
    regression = "confidence" not in frame and run.get("task") == "classify"

    def typed(column, value):
        if value == "":
            return value
        if column == "correct":
            return value == "True"
        try:
            if column in ("row", "line"):
                return int(value)
            if (column in ("confidence", "f1", "exact_match") or column.startswith("p(")
                    or (regression and column in ("prediction", "gold"))):
                return float(value)
        except ValueError:
            pass
        return value

    return [{c: typed(c, v) for c, v in record.items()}
            for record in frame.to_dict(orient="records")]


def export_predictions(run, path):
    """Write the predictions to `path`: .csv, .tsv or .jsonl (by extension)."""
    from bertdesk.training.finetune import write_rows

    path = Path(path)
    if path.suffix.lower() not in PREDICTION_TYPES:
        raise ExportError(f"{path.name}: the file name must end in "
                          f"{', '.join(PREDICTION_TYPES)}")
    return write_rows(prediction_records(run), path)  # atomic


def esc(value):
    return html.escape(str(value))


def _table(header, rows, first_left=True, numbers=True):
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td{' class=num' if numbers and (j or not first_left) else ''}>{esc(v)}</td>"
        for j, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def curve_svg(history, keys, title, width=520, height=240, task=None):
    """A line chart (inline SVG) of per-epoch values."""
    left, right, top, bottom = 50, 130, 24, 30
    values = [h[k] for h in history for k in keys if isinstance(h.get(k), (int, float))]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = len(history)
    x = lambda i: left + (i * (width - left - right) / max(1, n - 1))  # noqa: E731
    y = lambda v: top + (hi - v) * (height - top - bottom) / (hi - lo)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="14" font-weight="bold">{esc(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{width - left - right}" '
           f'height="{height - top - bottom}" fill="none" stroke="#999"/>',
           f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{hi:.3g}</text>',
           f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{lo:.3g}</text>']
    for i in range(n):
        out.append(f'<text x="{x(i):.1f}" y="{height - bottom + 14}" '
                   f'text-anchor="middle">{i + 1}</text>')
    out.append(f'<text x="{(width - right + left) / 2:.1f}" y="{height - 2}" '
               f'text-anchor="middle">epoch</text>')
    for c, key in enumerate(keys):
        colour = CURVE_COLOURS[c % len(CURVE_COLOURS)]
        pts = [(x(i), y(h[key])) for i, h in enumerate(history)
               if isinstance(h.get(key), (int, float))]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                   + " ".join(f"{px:.1f},{py:.1f}" for px, py in pts) + '"/>')
        out += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>' for px, py in pts]
        out.append(f'<text x="{width - right + 10}" y="{top + 14 * (c + 1)}" '
                   f'fill="{colour}">{esc(metric_name(key, task))}</text>')
    out.append("</svg>")
    return "".join(out)


STYLE = """body { font-family: sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: left; }
td.num { text-align: right; } th { background: #eee; }"""


def report_html(run, curves=True):
    """A self-contained HTML report of a run: its settings, validation
    metrics, per-class table, confusion matrix and per-epoch curve (inline
    SVG, left out with `curves=False`; the per-epoch table stays)."""
    results = read_results(run)
    task = run.get("task", "classify")
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>bertdesk run "
           f"{esc(run['id'])}</title><style>{STYLE}</style></head><body>",
           f"<h1>bertdesk run {esc(run['id'])}</h1>", "<h2>Run</h2>"]
    fields = [(k, run[k]) for k in ("task", "status", "started", "ended", "data", "dropped_rows",
                                    "model", "backend", "precision", "output", "error")
              if run.get(k) not in (None, "")]
    if results:
        fields += [("best epoch", results.get("best_epoch")),
                   ("training time", f"{results.get('train_seconds', 0):.1f} s"),
                   ("steps", results.get("steps"))]
    fields += list((run.get("settings") or {}).items())
    out.append(_table(["setting", "value"], [(k, "" if v is None else v) for k, v in fields],
                      numbers=False))
    if results is None:
        out.append(f"<p>{esc(no_results_message(run))}</p></body></html>")
        return "".join(out)

    metrics = results["metrics"]
    out.append("<h2>Validation metrics</h2>")
    out.append(_table(["metric", "value"],
                      [(metric_name(k, task), format_value(k, metrics[k], task))
                       for k in SCALARS if isinstance(metrics.get(k), (int, float))]))
    table = breakdown(metrics, task)
    if table:
        head, keys, rows = table
        out.append(f"<h2>Per {esc(head)}</h2>")
        out.append(_table([head] + [metric_name(k, task, per_row=True) for k in keys],
                          [[name] + [format_value(k, r[k], task) if k in r else ""
                                     for k in keys] for name, r in rows]))
    labels = run_labels(run, metrics)
    matrix = metrics.get("confusion_matrix")
    if matrix and labels and len(matrix) == len(labels):
        top = max(max(r) for r in matrix) or 1
        out.append("<h2>Confusion matrix</h2><p>Rows: gold label. Columns: predicted.</p>"
                   "<table><tr><th></th>"
                   + "".join(f"<th>{esc(label)}</th>" for label in labels) + "</tr>")
        for label, row in zip(labels, matrix):
            cells = "".join(
                f"<td class=num style='background:rgb({int(255 - c / top * 222)},"
                f"{int(255 - c / top * 153)},{int(255 - c / top * 83)});"
                f"color:{'#fff' if c / top > 0.5 else '#000'}'>{int(c)}</td>" for c in row)
            out.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
        out.append("</table>")
    history = [h for h in results.get("history") or [] if isinstance(h, dict)]
    if history:
        keys = [k for k in history[-1] if k not in COUNTS
                and isinstance(history[-1][k], (int, float))]
        losses = [k for k in keys if "loss" in k]
        others = [k for k in keys if "loss" not in k and k not in LOGITS]
        out.append("<h2>Per epoch</h2>")
        for group, title in ((losses, "loss"), (others, "validation metrics")):
            if group and curves:
                out.append(f"<p>{curve_svg(history, group, title, task=task)}</p>")
        out.append(_table(["epoch"] + [metric_name(k, task) for k in keys],
                          [[i] + [format_value(k, h[k], task) if k in h else "" for k in keys]
                           for i, h in enumerate(history, 1)], first_left=False))
    out.append("</body></html>")
    return "".join(out)


def export_report_html(run, path):
    from bertdesk.io.atomic import atomic_write_text

    atomic_write_text(path, report_html(run))
    return Path(path)


def export_report_pdf(run, path):
    """The same report as PDF (Qt's rich text draws no SVG, so the curve is
    left out; its table stays). Needs a QApplication."""
    from PySide6.QtGui import QPageSize, QTextDocument
    from PySide6.QtPrintSupport import QPrinter

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        doc = QTextDocument()
        doc.setHtml(report_html(run, curves=False))
        printer = QPrinter(QPrinter.HighResolution)
        printer.setOutputFormat(QPrinter.PdfFormat)
        printer.setPageSize(QPageSize(QPageSize.A4))
        printer.setOutputFileName(tmp)
        doc.print_(printer)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# === The page ===

class ExportPage(QWidget):
    def __init__(self, state, parent=None):
        super().__init__(parent)
        self.state = state
        self.run = None
        self.title = QLabel("Export")
        self.title.setStyleSheet("font-size: 15pt; font-weight: 600;")
        self.summary = QLabel()
        self.summary.setTextFormat(Qt.PlainText)
        self.summary.setWordWrap(True)
        self.copy_button = QPushButton("Copy model folder…")
        self.transformers_button = QPushButton("Export for transformers…")
        self.predictions_button = QPushButton("Save predictions…")
        self.report_button = QPushButton("Save report…")
        grid = QGridLayout()
        for i, (button, text) in enumerate((
                (self.copy_button, "The fine-tuned model (weights, tokenizer, labels), to load "
                                   "with bertdesk or use from the command line."),
                (self.transformers_button, "The same model as a Hugging Face transformers "
                                           "task model (BertFor…, labels included), for "
                                           "AutoModelFor… and pipeline()."),
                (self.predictions_button, "The validation predictions, as CSV or JSON lines "
                                          "(.csv, .tsv, .jsonl)."),
                (self.report_button, "Settings, metrics, per-class table, confusion matrix "
                                     "and per-epoch curve, as HTML (or PDF: .pdf).")), 0):
            note = QLabel(text)
            note.setWordWrap(True)
            grid.addWidget(button, i, 0)
            grid.addWidget(note, i, 1)
        grid.setColumnStretch(1, 1)
        self.status = QLabel()
        self.status.setTextFormat(Qt.PlainText)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.summary)
        layout.addLayout(grid)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.copy_button.clicked.connect(self.choose_copy_target)
        self.transformers_button.clicked.connect(self.choose_transformers_target)
        self.predictions_button.clicked.connect(self.choose_predictions_file)
        self.report_button.clicked.connect(self.choose_report_file)
        state.run_changed.connect(self._run_changed)
        self.show_run(state.history.get(state.current_run) if state.current_run else None)

    def _run_changed(self, run):
        if run and run.get("id") == self.state.current_run and run.get("status") != "running":
            self.show_run(run)

    def show_run(self, run):
        self.run = run
        self.status.clear()
        self.title.setText(f"Export: run {run['id']}" if run else "Export")
        output = Path(run["output"]) if run and run.get("output") else None
        # a run still training rewrites its model/ (exported once it ends)
        has_model = bool(output and run.get("status") != "running"
                         and (output / "model" / "bertdesk.json").is_file())
        has_predictions = bool(output and (output / "validation_predictions.csv").is_file())
        self.copy_button.setEnabled(has_model)
        self.transformers_button.setEnabled(has_model)
        self.predictions_button.setEnabled(has_predictions)
        self.report_button.setEnabled(run is not None)
        if run is None:
            self.summary.setText(no_results_message(None))
        else:
            missing = [what for what, ok in (("no saved model", has_model),
                                             ("no predictions", has_predictions)) if not ok]
            self.summary.setText(f"Run {run['id']} ({run.get('task', '')}, "
                                 f"{run.get('status', '')}); output folder: {output}"
                                 + (f"\nThis run has {' and '.join(missing)}." if missing else ""))

    def _do(self, action, *args):
        try:
            result = action(self.run, *args)
        except (ExportError, OSError) as e:
            self.status.setStyleSheet("color: #c0392b;")
            self.status.setText(str(e))
            return None
        self.status.setStyleSheet("")
        self.status.setText(f"Saved {result}")
        return result

    def _start_dir(self):
        return str(Path.home())

    def choose_copy_target(self):
        target = QFileDialog.getExistingDirectory(self, "Copy the model into (a new or empty "
                                                  "folder)", self._start_dir())
        return self._do(copy_model, target) if target else None

    def choose_transformers_target(self):
        """Ask for a folder, then write the export off the GUI thread (it
        builds the model: seconds for a base-sized one)."""
        from bertdesk_gui.worker import run_async

        target = QFileDialog.getExistingDirectory(self, "Export for transformers into (a new "
                                                  "or empty folder)", self._start_dir())
        if not target:
            return None
        run = self.run
        self.transformers_button.setEnabled(False)
        self.status.setStyleSheet("")
        self.status.setText(f"Exporting to {target}…")

        # A run shown since has its own button and status (`show_run`): the
        # export's end leaves them alone (it enabled the button of a run with
        # no model, and wrote its status under the other run's name).
        def shown():  # (the history may hand the same run back as another dict)
            return bool(self.run) and self.run.get("id") == run.get("id")

        def done(folder):
            if shown():
                self.transformers_button.setEnabled(True)
                self.status.setText(f"Saved {folder} (transformers task model)")

        def failed(error, _trace):
            if shown():
                self.transformers_button.setEnabled(True)
                self.status.setStyleSheet("color: #c0392b;")
                self.status.setText(str(error))

        return run_async(lambda: export_transformers(run, target), done, failed)

    def _may_replace(self, path):
        """Whether to write `path`, a name the dialog's choice was given a
        file type's suffix after the dialog asked about replacing a file (it
        asked about the name without it): True where no file has that name,
        else the user's answer."""
        if not Path(path).exists():
            return True
        answer = QMessageBox.question(
            # (rich text, escaped: a name with markup is shown as written)
            self, "Replace file?", f"<p>{html.escape(str(path))} already exists. Replace it?</p>",
            QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        if answer == QMessageBox.Yes:
            return True
        self.status.setStyleSheet("")
        self.status.setText(f"Not saved: {path} exists")
        return False

    def _is_an_input(self, path):
        """Whether `path` is the run's data file or the dataset open in the
        app (the status says so): an export is never written over them."""
        inputs = [self.run.get("data"), self.state.dataset and self.state.dataset.path]
        for data in filter(None, inputs):
            try:
                same = os.path.samefile(data, path)
            except OSError:  # either one is not there
                continue
            if same:
                self.status.setStyleSheet("color: #b00020;")
                self.status.setText(f"Not saved: {path} is the data file {data}; choose "
                                    "another name")
                return True
        return False

    def choose_predictions_file(self):
        path, chosen = QFileDialog.getSaveFileName(
            self, "Save predictions", str(Path(self._start_dir()) /
                                          f"{self.run['id']}-predictions.csv"),
            "CSV (*.csv);;TSV (*.tsv);;JSON lines (*.jsonl)")
        if not path:
            return None
        if Path(path).suffix.lower() not in PREDICTION_TYPES:
            path += {"TSV": ".tsv", "JSON lines": ".jsonl"}.get(chosen.split(" (")[0], ".csv")
            if self._is_an_input(path) or not self._may_replace(path):
                return None
        elif self._is_an_input(path):
            return None
        return self._do(export_predictions, path)

    def choose_report_file(self):
        path, chosen = QFileDialog.getSaveFileName(
            self, "Save report", str(Path(self._start_dir()) / f"{self.run['id']}-report.html"),
            "HTML (*.html);;PDF (*.pdf)")
        if not path:
            return None
        if Path(path).suffix.lower() not in (".html", ".htm", ".pdf"):
            path += ".pdf" if chosen.startswith("PDF") else ".html"
            if self._is_an_input(path) or not self._may_replace(path):
                return None
        elif self._is_an_input(path):
            return None
        pdf = Path(path).suffix.lower() == ".pdf"
        return self._do(export_report_pdf if pdf else export_report_html, path)
