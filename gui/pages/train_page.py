"""Train page: the hyperparameter form, Start and Cancel, live progress
(steps, epoch, throughput, ETA), loss and validation curves, a log, and the
run history (kept on disk, reopened after a restart)."""

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout,
                               QHeaderView,
                               QLabel, QPlainTextEdit, QProgressBar, QPushButton, QSpinBox,
                               QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from bertdesk_gui.frame_model import plain_tip
from bertdesk_gui.pages.evaluate_page import LOGITS
from bertdesk_gui.training_process import TrainingProcess, child_env

HISTORY_COLUMNS = ["Run", "Started", "Task", "Data", "Model", "Backend", "Status", "Result",
                   "Output"]


def _spin(lo, hi, value, step=1):
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    box.setSingleStep(step)
    return box


def _check(text, checked, tip):
    box = QCheckBox(text)
    box.setChecked(checked)
    box.setToolTip(tip)
    return box


def _dspin(lo, hi, value, decimals, step):
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def headline(metrics, task):
    """The one number a run is judged by, as text."""
    if not metrics:
        return ""
    if task == "qa":
        return f"EM {metrics.get('exact_match', 0):.1f}, F1 {metrics.get('f1', 0):.1f}"
    if task == "ner":
        return f"entity F1 {metrics.get('f1', 0):.3f}"
    if "pearson" in metrics:
        return f"Pearson {metrics['pearson']:.3f}"
    return f"accuracy {metrics.get('accuracy', 0):.3f}, macro F1 {metrics.get('macro_f1', 0):.3f}"


class TrainPage(QWidget):
    run_finished = Signal(dict)  # the run record, whatever its status
    open_run = Signal(dict)  # a run picked in the history

    def __init__(self, state, parent=None):
        super().__init__(parent)
        self.state = state
        self.process = TrainingProcess(self)
        self.process.event.connect(self.on_event)
        self.process.log.connect(self.append_log)
        self.process.finished.connect(self.on_finished)
        self.run = None
        self.run_result = {}  # the child's final "result" event

        s = state.settings
        self.fields = {
            "epochs": _spin(1, 1000, s.epochs),
            "batch_size": _spin(1, 4096, s.batch_size),
            "gradient_accumulation": _spin(1, 256, s.gradient_accumulation),
            "learning_rate": _dspin(1e-7, 0.99, s.learning_rate, 7, 1e-5),
            "max_length": _spin(8, 512, s.max_length, 8),
            "warmup_ratio": _dspin(0, 0.99, s.warmup_ratio, 3, 0.01),
            "weight_decay": _dspin(0, 0.99, s.weight_decay, 4, 0.001),
            "seed": _spin(0, 2**31 - 1, s.seed),
            "validation_fraction": _dspin(0.01, 0.89, s.validation_fraction, 2, 0.05),
            "early_stopping_patience": _spin(0, 100, s.early_stopping_patience),
        }
        names = {"epochs": "Epochs", "batch_size": "Batch size",
                 "gradient_accumulation": "Batches per update",
                 "learning_rate": "Learning rate",
                 "max_length": "Max length (tokens)", "warmup_ratio": "Warmup ratio",
                 "weight_decay": "Weight decay", "seed": "Seed",
                 "validation_fraction": "Validation fraction",
                 "early_stopping_patience": "Early stopping patience (epochs, 0 = off)"}
        self.fields["gradient_accumulation"].setToolTip(
            "Gradient accumulation: update the weights once every K batches, from their "
            "mean gradient (an update batch of K x batch size in the memory of one batch)")
        form_box = QGroupBox("Settings")
        form = QFormLayout(form_box)
        for key, widget in self.fields.items():
            form.addRow(names[key] + ":", widget)
            widget.valueChanged.connect(self._settings_changed)
        self.checkpointing_box = _check(
            "less memory, about 1.4x the time per step", s.gradient_checkpointing,
            "Recompute each layer's activations in the backward pass instead of keeping "
            "them (the same numbers; saves memory on PyTorch and TensorFlow, not on JAX "
            "on a CPU)")
        self.balance_box = _check(
            "rare labels weigh more (balanced class weights)", s.balanced_class_weights,
            "One label per row: each example's loss times n / (labels x its label's count), "
            "so every label counts the same. Several labels per row: each label's positive "
            "examples weigh its negatives / its positives.")
        for label, box in (("Gradient checkpointing:", self.checkpointing_box),
                           ("Balance classes:", self.balance_box)):
            box.toggled.connect(self._settings_changed)
            form.addRow(label, box)
        state.dataset_changed.connect(self._dataset_changed)
        self._dataset_changed(state.dataset)
        self.form_error = QLabel()
        self.form_error.setStyleSheet("color: #c0392b;")
        self.form_error.setWordWrap(True)
        form.addRow(self.form_error)

        self.start_button = QPushButton("Start training")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)

        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m steps")
        self.status_label = QLabel("Idle.")
        self.status_label.setTextFormat(Qt.PlainText)
        self.best_label = QLabel("")
        self.best_label.setTextFormat(Qt.PlainText)

        pg.setConfigOptions(antialias=True, background="w", foreground="k")
        self.loss_plot = pg.PlotWidget(title="Training loss (per step)")
        self.loss_plot.setLabel("bottom", "step")
        self.loss_curve = self.loss_plot.plot(pen=pg.mkPen("#2c7fb8", width=1.5))
        self.epoch_loss_curve = self.loss_plot.plot(pen=None, symbol="o", symbolSize=7,
                                                    symbolBrush="#2c7fb8")
        self.metric_plot = pg.PlotWidget(title="Validation (per epoch)")
        self.metric_plot.setLabel("bottom", "epoch")
        self.metric_plot.addLegend(offset=(10, 10))
        self.metric_curves = {}
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)

        self.history_table = QTableWidget(0, len(HISTORY_COLUMNS))
        self.history_table.setHorizontalHeaderLabels(HISTORY_COLUMNS)
        self.history_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.history_table.horizontalHeader().setStretchLastSection(True)
        self.history_table.verticalHeader().hide()
        self.history_table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.history_table.setSelectionBehavior(QTableWidget.SelectRows)
        self.history_table.cellDoubleClicked.connect(self._history_clicked)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(form_box)
        lv.addLayout(buttons)
        lv.addStretch(1)
        plots = QSplitter(Qt.Horizontal)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.metric_plot)
        right = QSplitter(Qt.Vertical)
        top = QWidget()
        tv = QVBoxLayout(top)
        tv.setContentsMargins(0, 0, 0, 0)
        tv.addWidget(self.progress)
        tv.addWidget(self.status_label)
        tv.addWidget(self.best_label)
        tv.addWidget(plots, 1)
        right.addWidget(top)
        right.addWidget(self.log_view)
        history_box = QGroupBox("Run history (double-click to open)")
        QVBoxLayout(history_box).addWidget(self.history_table)
        right.addWidget(history_box)
        right.setSizes([420, 120, 160])
        main = QSplitter(Qt.Horizontal)
        main.addWidget(left)
        main.addWidget(right)
        main.setStretchFactor(1, 1)
        main.setSizes([300, 800])
        QVBoxLayout(self).addWidget(main)
        self._reset_curves()
        self.refresh_history()

    # --- form ---

    def _dataset_changed(self, ds):
        """Class weights apply to classification with one or several labels."""
        self.balance_box.setEnabled(ds is not None and ds.task == "classify"
                                    and ds.problem_type in ("single_label", "multi_label"))

    def _settings_changed(self, *_):
        for key, widget in self.fields.items():
            setattr(self.state.settings, key, widget.value())
        self.state.settings.gradient_checkpointing = self.checkpointing_box.isChecked()
        self.state.settings.balanced_class_weights = self.balance_box.isChecked()
        problems = self.state.settings.problems()
        self.form_error.setText("\n".join(problems.values()))

    # --- running ---

    def start(self):
        self._settings_changed()
        missing = self.state.ready()
        if missing:
            self.status_label.setText(f"Cannot start: {missing}")
            return False
        if self.process.is_running():
            return False
        self._reset_curves()
        self.log_view.clear()
        self.run = self.state.new_run()
        self.append_log(f"run {self.run['id']}: {self.run['output']}")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status_label.setText("Starting (loading the backend and the model)…")
        self.best_label.setText("")
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.process.start(self.run["args"], env=child_env(self.run["backend"]))
        self.refresh_history()
        return True

    def cancel(self):
        if self.process.is_running():
            self.status_label.setText("Cancelling…")
            self.cancel_button.setEnabled(False)
            self.process.cancel()

    def is_running(self):
        return self.process.is_running()

    def _reset_curves(self):
        self.steps, self.losses = [], []
        self.epoch_steps, self.epoch_losses = [], []
        self.epochs_seen, self.metric_values = [], {}
        self.loss_curve.setData([], [])
        self.epoch_loss_curve.setData([], [])
        for curve in self.metric_curves.values():
            self.metric_plot.removeItem(curve)
        self.metric_curves = {}

    def on_event(self, event):
        kind = event.get("event")
        if kind == "train_begin":
            self.progress.setRange(0, int(event.get("total_steps", 1)))
        elif kind == "step":
            self.progress.setMaximum(int(event["total_steps"]))
            self.progress.setValue(int(event["step"]))
            self.steps.append(event["step"])
            self.losses.append(event["loss"])
            self.loss_curve.setData(self.steps, self.losses)
            eta = event.get("eta_seconds")
            eta = "?" if eta is None else f"{int(eta) // 60}:{int(eta) % 60:02d}"
            self.status_label.setText(
                f"epoch {event['epoch']}/{event['epochs']}  step {event['step']}/"
                f"{event['total_steps']}  loss {event['loss']:.4f}  "
                f"lr {event['learning_rate']:.2e}  "
                f"{event['examples_per_second']:.1f} examples/s  ETA {eta}")
        elif kind == "epoch":
            self.epoch_steps.append(self.steps[-1] if self.steps else 0)
            self.epoch_losses.append(event["loss"])
            self.epoch_loss_curve.setData(self.epoch_steps, self.epoch_losses)
            self.epochs_seen.append(event["epoch"])
            colors = ["#d95f02", "#1b9e77", "#7570b3", "#e7298a"]
            for name, value in event.get("validation", {}).items():
                if not isinstance(value, (int, float)) or name in LOGITS:
                    continue
                values = self.metric_values.setdefault(name, [])
                values.append(value)
                if name not in self.metric_curves:
                    color = colors[len(self.metric_curves) % len(colors)]
                    self.metric_curves[name] = self.metric_plot.plot(
                        pen=pg.mkPen(color, width=2), symbol="o", symbolBrush=color, name=name)
                self.metric_curves[name].setData(self.epochs_seen[-len(values):], values)
            val = ", ".join(f"{k} {v:.4f}" for k, v in event.get("validation", {}).items()
                            if isinstance(v, (int, float)))
            mark = "  — best so far, model saved" if event.get("improved") else ""
            self.append_log(f"epoch {event['epoch']}: loss {event['loss']:.4f}; "
                            f"validation {val}{mark}")
            if event.get("improved"):
                self.best_label.setText(f"Best: epoch {event['epoch']} ({val})")
        elif kind == "message":
            self.append_log(event.get("text", ""))
        elif kind == "result":
            self.run_result = event
            self.cancel_button.setEnabled(False)  # finished: the child is only exiting
        elif kind == "error":
            self.append_log("error: " + event.get("text", ""))

    def append_log(self, line):
        self.log_view.appendPlainText(line)

    def on_finished(self, status, message):
        run_id = self.run["id"] if self.run else None
        metrics = self.run_result.get("metrics") if status == "finished" else None
        self.run_result = {}
        if run_id:
            self.state.finish_run(run_id, status, metrics=metrics,
                                  error=message if status == "failed" else None)
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if status == "finished":
            self.status_label.setText(f"Finished: {headline(metrics, self.run['task'])}")
        elif status == "cancelled":
            self.status_label.setText("Cancelled. The best model saved so far (if an epoch "
                                      "finished) is in the run folder.")
        else:
            self.status_label.setText("Failed: " + message.splitlines()[-1] if message
                                      else "Failed.")
            self.append_log("the training process failed:\n" + message)
        self.refresh_history()
        if run_id:
            self.run_finished.emit(self.state.history.get(run_id))

    # --- history ---

    def refresh_history(self):
        runs = list(reversed(self.state.history.runs))
        self.history_table.setRowCount(len(runs))
        for i, run in enumerate(runs):
            values = [run["id"], run.get("started", ""), run.get("task", ""),
                      run.get("data", ""), run.get("model", ""), run.get("backend", ""),
                      run.get("status", ""), headline(run.get("metrics"), run.get("task")),
                      run.get("output", "")]
            for j, v in enumerate(values):
                item = QTableWidgetItem(str(v))
                item.setData(Qt.UserRole, run["id"])
                if j == 3:
                    item.setToolTip(plain_tip(v))
                self.history_table.setItem(i, j, item)

    def _history_clicked(self, row, _column):
        run_id = self.history_table.item(row, 0).data(Qt.UserRole)
        run = self.state.history.get(run_id)
        if run:
            self.state.current_run = run_id
            self.open_run.emit(run)

    def shutdown(self):
        """Closing the app: stop the child and wait for it."""
        self.process.wait_stopped()
