"""Evaluate: a finished run's validation metrics, read from its output folder
(`metrics.json` and the model's label list): a summary line, a per-class or
per-entity-type table and, for single-label classification, a confusion
matrix whose cells name a (gold, predicted) pair for the Inspect page.

The reading functions at the top are plain Python, shared with the Inspect
and Export pages."""

import json
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QGroupBox, QHeaderView, QLabel, QSizePolicy,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from bertdesk_gui.frame_model import plain_tip

# === Reading a run's results ===

SCALARS = {  # metric key -> shown name, in display order
    "accuracy": "accuracy", "macro_f1": "macro F1", "micro_f1": "micro F1", "mcc": "MCC",
    "exact_match": "exact match", "precision": "precision", "recall": "recall", "f1": "F1",
    "HasAns_exact": "has-answer EM", "HasAns_f1": "has-answer F1",
    "NoAns_exact": "no-answer EM", "NoAns_f1": "no-answer F1",
    "pearson": "Pearson", "spearman": "Spearman", "mse": "MSE",
    "support": "support", "total": "questions", "null_threshold": "null threshold"}
COUNTS = {"support", "total"}
# QA null thresholds: logit differences, not scores (never in %, never on a score curve)
LOGITS = {"null_threshold", "best_exact_thresh", "best_f1_thresh"}


def read_results(run):
    """The parsed `<output>/metrics.json` of a run, or None when it has none
    (still running, cancelled, failed, or the folder is gone)."""
    if not run or not run.get("output"):
        return None
    path = Path(run["output"]) / "metrics.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return results if isinstance(results.get("metrics"), dict) else None


def model_meta(run):
    """`<output>/model/bertdesk.json` (task, head with its labels, training
    arguments), or {}."""
    try:
        return json.loads((Path(run["output"]) / "model" / "bertdesk.json")
                          .read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run_labels(run, metrics=None):
    """The model's labels, in the order of its outputs and of the confusion
    matrix; falls back to the per-class report's order."""
    labels = (model_meta(run).get("head") or {}).get("labels")
    if labels:
        return [str(label) for label in labels]
    per_class = (metrics or {}).get("per_class") or []
    return [str(row["label"]) for row in per_class] or None


def is_percent(task):
    return task == "qa"  # SQuAD's EM and F1 are percentages; the rest are fractions


def metric_name(key, task, per_row=False):
    """A metric's shown name; `per_row`: as a column of the per-label table
    (there a classifier's `f1` is the label's own, not the binary F1)."""
    if (key, task) == ("support", "ner"):
        return "gold entities"
    if (key, task) == ("f1", "classify") and not per_row:
        return "binary F1"  # the second label's (GLUE's MRPC F1)
    return SCALARS.get(key, key)


def format_value(key, value, task):
    if key in COUNTS:
        return str(int(value))
    if key in LOGITS:
        return f"{value:.2f}"
    if is_percent(task):
        return f"{value:.2f} %"
    return f"{value:.4f}"


def scalar_metrics(metrics):
    """[(key, name, value)] of the run's single-number metrics, in display order."""
    return [(k, name, metrics[k]) for k, name in SCALARS.items()
            if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics[k], bool)]


def summary_text(metrics, task):
    return ",  ".join(f"{metric_name(k, task)} {format_value(k, v, task)}"
                      for k, _, v in scalar_metrics(metrics))


def breakdown(metrics, task):
    """(row header, column keys, [(row name, {key: value})]) for the per-class,
    per-entity-type or has/no-answer table; None when the task has none."""
    if metrics.get("per_class"):
        rows = [(str(r["label"]), r) for r in metrics["per_class"]]
        head = "label"
    elif metrics.get("per_type"):
        rows = [(str(t), r) for t, r in metrics["per_type"].items()]
        head = "entity type"
    elif any(k.startswith(("HasAns_", "NoAns_")) for k in metrics):
        rows = [(group, {"exact_match": metrics[f"{group}_exact"], "f1": metrics[f"{group}_f1"],
                         **({"support": metrics[f"{group}_total"]}
                            if f"{group}_total" in metrics else {})})
                for group in ("HasAns", "NoAns") if f"{group}_exact" in metrics]
        head = "questions"
    else:
        return None
    keys = [k for k in ("precision", "recall", "f1", "exact_match", "support")
            if any(k in r for _, r in rows)]
    return head, keys, rows


def no_results_message(run):
    if not run:
        return "No run yet. Train a model on the Train page; its results appear here."
    status = run.get("status", "unknown")
    if status == "running":
        return f"Run {run['id']} is still training; its results appear here when it ends."
    why = {"cancelled": "was cancelled before it finished",
           "interrupted": "was interrupted (the app closed while it trained)",
           "failed": "failed"}.get(status, "has no results")
    error = f"\n\n{run['error']}" if run.get("error") and status == "failed" else ""
    return f"Run {run['id']} {why}, so there are no validation metrics.{error}"


# === Widgets ===

def count_colour(count, top):
    """White for 0 to dark blue for the largest count."""
    t = count / top if top else 0.0
    return QColor(int(255 - t * (255 - 33)), int(255 - t * (255 - 102)), int(255 - t * (255 - 172)))


def readonly_item(text, align=Qt.AlignRight | Qt.AlignVCenter):
    item = QTableWidgetItem(text)
    item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)
    item.setTextAlignment(align)
    return item


class EvaluatePage(QWidget):
    """Signal `cell_selected(gold, predicted)`: a confusion matrix cell was clicked."""

    cell_selected = Signal(str, str)

    def __init__(self, state, parent=None):
        super().__init__(parent)
        self.state = state
        self.run = None
        self.labels = []
        self.title = QLabel()
        self.title.setTextFormat(Qt.PlainText)
        self.title.setStyleSheet("font-size: 15pt; font-weight: 600;")
        self.message = QLabel()
        self.message.setTextFormat(Qt.PlainText)
        self.message.setWordWrap(True)
        self.summary = QLabel()
        self.summary.setTextFormat(Qt.PlainText)
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.summary.setStyleSheet("font-size: 12pt;")

        self.metrics_table = QTableWidget(0, 0)
        self.metrics_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.metrics_table.verticalHeader().setVisible(False)
        self.metrics_table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.metrics_box = QGroupBox("Per class")
        self.metrics_box.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)
        box = QVBoxLayout(self.metrics_box)
        box.addWidget(self.metrics_table)

        self.confusion_table = QTableWidget(0, 0)
        self.confusion_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.confusion_table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.confusion_table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.confusion_table.verticalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.confusion_table.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.confusion_table.cellClicked.connect(self._cell_clicked)
        self.confusion_box = QGroupBox("Confusion matrix")
        box = QVBoxLayout(self.confusion_box)
        caption = QLabel("Rows: gold label.  Columns: predicted label.  "
                         "Click a cell to see those examples on the Inspect page.")
        caption.setWordWrap(True)
        box.addWidget(caption)
        box.addWidget(self.confusion_table)

        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.message)
        layout.addWidget(self.summary)
        layout.addWidget(self.metrics_box)
        layout.addWidget(self.confusion_box, 1)
        layout.addStretch(0)
        state.run_changed.connect(self._run_changed)
        current = state.history.get(state.current_run) if state.current_run else None
        self.show_run(current)

    def _run_changed(self, run):
        # a run that ended (or was chosen) while this page shows it, or nothing
        if run and run.get("id") == self.state.current_run and run.get("status") != "running":
            self.show_run(run)

    def show_run(self, run):
        self.run = run
        results = read_results(run)
        self.title.setText(f"Evaluate: run {run['id']}" if run else "Evaluate")
        if results is None:
            self.message.setText(no_results_message(run))
            self.message.show()
            for w in (self.summary, self.metrics_box, self.confusion_box):
                w.hide()
            self.labels = []
            return
        metrics, task = results["metrics"], run.get("task", "classify")
        self.message.hide()
        best = results.get("best_epoch")
        self.summary.setText(
            f"Validation ({run.get('task', '')}, {run.get('status', '')}"
            + (f", best epoch {best}" if best else "") + "):  " + summary_text(metrics, task))
        self.summary.show()
        self._fill_breakdown(metrics, task)
        matrix = metrics.get("confusion_matrix")
        self.labels = run_labels(run, metrics) or []
        if matrix and len(matrix) == len(self.labels):
            self._fill_confusion(matrix)
            self.confusion_box.show()
        else:
            self.confusion_box.hide()

    def _fill_breakdown(self, metrics, task):
        table = breakdown(metrics, task)
        if table is None:
            self.metrics_box.hide()
            return
        head, keys, rows = table
        self.metrics_box.setTitle({"label": "Per class", "entity type": "Per entity type",
                                   "questions": "Questions with and without an answer"}[head])
        t = self.metrics_table
        t.clear()
        t.setColumnCount(1 + len(keys))
        t.setRowCount(len(rows))
        t.setHorizontalHeaderLabels([head] + [metric_name(k, task, per_row=True) for k in keys])
        for i, (name, values) in enumerate(rows):
            t.setItem(i, 0, readonly_item(name, Qt.AlignLeft | Qt.AlignVCenter))
            for j, k in enumerate(keys, 1):
                v = values.get(k)
                t.setItem(i, j, readonly_item("" if v is None else format_value(k, v, task)))
        t.resizeRowsToContents()
        shown = sum(t.rowHeight(i) for i in range(min(len(rows), 10)))
        t.setFixedHeight(t.horizontalHeader().sizeHint().height() + shown + 2 * t.frameWidth()
                         + (t.horizontalScrollBar().sizeHint().height() if len(rows) > 10 else 0))
        self.metrics_box.show()

    def _fill_confusion(self, matrix):
        t = self.confusion_table
        n = len(self.labels)
        mode = QHeaderView.Stretch if n <= 8 else QHeaderView.ResizeToContents
        t.horizontalHeader().setSectionResizeMode(mode)
        t.verticalHeader().setSectionResizeMode(mode)
        t.clear()
        t.setRowCount(n)
        t.setColumnCount(n)
        t.setHorizontalHeaderLabels([f"→ {label}" for label in self.labels])
        t.setVerticalHeaderLabels(self.labels)
        top = max((max(row) for row in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                item = readonly_item(str(count), Qt.AlignCenter)
                item.setBackground(QBrush(count_colour(count, top)))
                item.setForeground(QBrush(QColor("white" if top and count / top > 0.5
                                                 else "black")))
                item.setToolTip(plain_tip(f"gold {self.labels[i]}, predicted {self.labels[j]}: "
                                          f"{count}"))
                t.setItem(i, j, item)

    def _cell_clicked(self, row, column):
        if 0 <= row < len(self.labels) and 0 <= column < len(self.labels):
            self.cell_selected.emit(self.labels[row], self.labels[column])
