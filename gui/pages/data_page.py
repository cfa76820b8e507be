"""Data page: open a file (dialog or drag-and-drop), preview it, choose the
task's columns, see the label distribution, the validation split and the
rows that cannot be used (drop them for training, or fix the file)."""

import html
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QButtonGroup, QComboBox, QFileDialog, QFormLayout, QGroupBox,
                               QHBoxLayout, QHeaderView, QLabel, QPushButton, QRadioButton,
                               QSplitter, QTableView, QTableWidget, QTableWidgetItem, QVBoxLayout,
                               QWidget)

from bertdesk_gui.frame_model import FrameModel
from bertdesk_gui.state import TASKS, load_dataset
from bertdesk_gui.worker import run_async

FILE_FILTER = ("Datasets (*.csv *.tsv *.txt *.jsonl *.json *.parquet *.xlsx *.xls *.conll "
               "*.bmes *.bio *.ner);;All files (*)")
NONE = "(none)"
PROBLEM_TYPES = {"single_label": "one label per text", "multi_label": "several labels per text",
                 "regression": "a number (regression)"}


class DataPage(QWidget):
    loaded = Signal(object)  # the Dataset, once shown
    load_failed = Signal(str)

    def __init__(self, state, parent=None):
        super().__init__(parent)
        self.state = state
        self.setAcceptDrops(True)
        self._updating = False
        self._request = 0  # the latest open's number

        self.open_button = QPushButton("Open dataset…")
        self.open_button.clicked.connect(self.choose_file)
        self.path_label = QLabel("No dataset yet: open a file or drop it here.")
        self.path_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.path_label.setTextFormat(Qt.PlainText)  # a file named <b>x</b>.csv is shown so
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c0392b;")
        self.error_label.setTextFormat(Qt.PlainText)
        self.error_label.hide()
        top = QHBoxLayout()
        top.addWidget(self.open_button)
        top.addWidget(self.path_label, 1)

        # --- column mapping ---
        self.task_label = QLabel("-")
        self.text_combo, self.pair_combo, self.label_combo = QComboBox(), QComboBox(), QComboBox()
        self.problem_combo = QComboBox()
        for key, text in PROBLEM_TYPES.items():
            self.problem_combo.addItem(text, key)
        for combo in (self.text_combo, self.pair_combo, self.label_combo, self.problem_combo):
            combo.currentIndexChanged.connect(self._mapping_changed)
        mapping = QGroupBox("Task and columns")
        form = QFormLayout(mapping)
        form.addRow("Task:", self.task_label)
        form.addRow("Text column:", self.text_combo)
        form.addRow("Text pair column:", self.pair_combo)
        form.addRow("Label column:", self.label_combo)
        form.addRow("Labels are:", self.problem_combo)
        self.split_label = QLabel("-")
        self.split_label.setWordWrap(True)
        form.addRow("Validation:", self.split_label)

        # --- label distribution ---
        self.labels_table = QTableWidget(0, 3)
        self.labels_table.setHorizontalHeaderLabels(["Label", "Count", "Share"])
        self.labels_table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.labels_table.verticalHeader().hide()
        self.labels_table.setEditTriggers(QTableWidget.NoEditTriggers)
        labels_box = QGroupBox("Label distribution")
        QVBoxLayout(labels_box).addWidget(self.labels_table)

        # --- bad rows ---
        self.bad_table = QTableWidget(0, 2)
        self.bad_table.setHorizontalHeaderLabels(["Row", "Problem"])
        self.bad_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        self.bad_table.verticalHeader().hide()
        self.bad_table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.drop_radio = QRadioButton("Drop these rows for training (the file is not changed)")
        self.fix_radio = QRadioButton("I will fix the file, then open it again")
        self.drop_radio.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.drop_radio)
        group.addButton(self.fix_radio)
        self.drop_radio.toggled.connect(self._drop_changed)
        self.bad_box = QGroupBox("Rows that cannot be used")
        bad_layout = QVBoxLayout(self.bad_box)
        bad_layout.addWidget(self.bad_table)
        bad_layout.addWidget(self.drop_radio)
        bad_layout.addWidget(self.fix_radio)
        self.bad_box.hide()

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(mapping)
        side_layout.addWidget(labels_box, 1)
        side_layout.addWidget(self.bad_box, 1)

        self.preview_model = FrameModel()
        self.preview = QTableView()
        self.preview.setModel(self.preview_model)
        self.preview.setWordWrap(False)
        self.preview.horizontalHeader().setStretchLastSection(True)
        self.preview.verticalHeader().setDefaultSectionSize(24)
        self.rows_label = QLabel()
        preview_box = QWidget()
        pv = QVBoxLayout(preview_box)
        pv.setContentsMargins(0, 0, 0, 0)
        pv.addWidget(self.preview, 1)
        pv.addWidget(self.rows_label)

        splitter = QSplitter()
        splitter.addWidget(side)
        splitter.addWidget(preview_box)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([380, 700])

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.error_label)
        layout.addWidget(splitter, 1)

    # --- loading ---

    def choose_file(self):
        path, _ = QFileDialog.getOpenFileName(self, "Open dataset", "", FILE_FILTER)
        if path:
            self.open(path)

    def open(self, path):
        """Read `path` off the GUI thread; the page updates when it is read.
        Only the latest request counts: a slow read of a file opened before
        (the menu, a drop and Open recent stay usable meanwhile) is dropped."""
        self._request += 1
        request = self._request
        self.open_button.setEnabled(False)
        self.path_label.setText(f"Reading {path} …")
        self.error_label.hide()
        previous = self.state.dataset
        run_async(lambda: load_dataset(path, previous),
                  lambda ds: self._loaded(ds) if request == self._request else None,
                  lambda error, trace: (self._failed(error, trace, path)
                                        if request == self._request else None))

    def _loaded(self, ds):
        self.open_button.setEnabled(True)
        self.state.set_dataset(ds)
        self.show_dataset(ds)
        self.loaded.emit(ds)

    def _failed(self, error, _trace, path=None):
        self.open_button.setEnabled(True)
        ds = self.state.dataset  # the file opened before stays in use: say so
        self.path_label.setText(f"Could not open {Path(path).name if path else 'the file'}; "
                                f"still using {ds.path}" if ds is not None
                                else "No dataset loaded.")
        self.error_label.setText(str(error))
        self.error_label.show()
        self.load_failed.emit(str(error))

    def dragEnterEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):
        urls = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.open(urls[0])
            event.acceptProposedAction()

    # --- showing ---

    def show_dataset(self, ds):
        self._updating = True
        self.path_label.setText(f"{ds.path}  ({len(ds.frame):,} rows)")
        self.task_label.setText(TASKS[ds.task] + (f" — {ds.format} file" if ds.format else ""))
        table = ds.task == "classify"
        for combo, value, optional in ((self.text_combo, ds.text_column, False),
                                       (self.pair_combo, ds.text_pair_column, True),
                                       (self.label_combo, ds.label_column, True)):
            combo.clear()
            combo.setEnabled(table)
            if optional:
                combo.addItem(NONE, "")
            for c in ds.columns:
                combo.addItem(c, c)
            i = combo.findData(value or "")
            combo.setCurrentIndex(max(i, 0))
        self.problem_combo.setEnabled(table)
        self.problem_combo.setCurrentIndex(max(0, self.problem_combo.findData(ds.problem_type)))
        self._updating = False
        self._refresh(ds)

    def showEvent(self, event):
        super().showEvent(event)
        if self.state.dataset is not None:  # the fraction may have changed on the Train page
            self._show_split(self.state.dataset)

    def _show_split(self, ds):
        usable = len(ds.frame) - len(ds.bad_rows)
        frac = self.state.settings.validation_fraction
        if ds.task == "classify":
            how = "stratified by label" if ds.problem_type == "single_label" else "random"
        elif ds.task == "qa":
            how = "whole articles held out"
        else:
            how = "random sentences"
        self.split_label.setText(f"{round(usable * frac):,} of {usable:,} ({frac:.0%}), {how}")

    def _refresh(self, ds):
        bad = ds.bad_rows
        self.preview_model.set_frame(ds.frame, [r for r, _ in bad])
        self._size_columns(ds.frame)
        self.rows_label.setText(f"{len(ds.frame):,} rows" +
                                (f", {len(bad):,} cannot be used (red)" if bad else ""))
        counts = ds.label_counts()
        total = sum(counts.values()) or 1
        self.labels_table.setRowCount(len(counts))
        for i, (label, n) in enumerate(counts.items()):
            for j, text in enumerate((label, f"{n:,}", f"{100 * n / total:.1f}%")):
                item = QTableWidgetItem(text)
                if j:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.labels_table.setItem(i, j, item)
        self._show_split(ds)
        self.bad_table.setRowCount(min(len(bad), 1000))
        for i, (row, problem) in enumerate(bad[:1000]):
            self.bad_table.setItem(i, 0, QTableWidgetItem(str(row)))
            self.bad_table.setItem(i, 1, QTableWidgetItem(problem))
        self.bad_box.setVisible(bool(bad))
        self.bad_box.setTitle(f"Rows that cannot be used ({len(bad):,})")

    def _size_columns(self, frame):
        """Width by the typical length of each column's first rows: long text
        gets room, short labels do not."""
        sample = frame.head(200)
        metrics = self.preview.fontMetrics()
        for j, column in enumerate(frame.columns):
            typical = sample[column].astype(str).str.len().quantile(0.9) if len(sample) else 0
            chars = max(len(str(column)), min(int(typical), 70))
            self.preview.setColumnWidth(j, metrics.averageCharWidth() * chars + 24)

    def _mapping_changed(self):
        ds = self.state.dataset
        if self._updating or ds is None or ds.task != "classify":
            return
        try:
            self.state.set_mapping(text_column=self.text_combo.currentData(),
                                   text_pair_column=self.pair_combo.currentData(),
                                   label_column=self.label_combo.currentData(),
                                   problem_type=self.problem_combo.currentData())
        except ValueError as e:
            self.error_label.setText(str(e))
            self.error_label.show()
            return
        self.error_label.hide()
        self._refresh(ds)

    def _drop_changed(self, checked):
        self.state.drop_bad_rows = checked
        self.state.dataset_changed.emit(self.state.dataset)

    def describe(self):
        """One line for the status bar."""
        ds = self.state.dataset
        if ds is None:
            return "no dataset"
        return html.escape(Path(ds.path).name)
