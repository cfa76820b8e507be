"""Model page: the bundled pretrained checkpoint, an architecture preset
(randomly initialised) or a local folder (Hugging Face, Google TF, keras-hub
or bertdesk); its size and vocabulary; the Keras backend and precision."""

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QButtonGroup, QComboBox, QFileDialog, QFormLayout, QGroupBox,
                               QHBoxLayout, QLabel, QLineEdit, QPushButton, QRadioButton,
                               QVBoxLayout, QWidget)

from bertdesk_gui.state import BACKENDS, PRECISIONS, describe_model, preset_names
from bertdesk_gui.worker import run_async


class ModelPage(QWidget):
    def __init__(self, state, parent=None):
        super().__init__(parent)
        self.state = state

        self.bundled_radio = QRadioButton("Pretrained all-MiniLM-L6-v2 (bundled, 6 layers, "
                                          "uncased English)")
        self.preset_radio = QRadioButton("Architecture preset, random weights:")
        self.folder_radio = QRadioButton("Checkpoint folder:")
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(preset_names())
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("Hugging Face, Google TF, keras-hub or bertdesk folder")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self.choose_folder)
        group = QButtonGroup(self)
        for b in (self.bundled_radio, self.preset_radio, self.folder_radio):
            group.addButton(b)
            b.toggled.connect(self._source_changed)
        self.bundled_radio.setChecked(True)
        self.preset_combo.currentIndexChanged.connect(self._source_changed)
        self.folder_edit.editingFinished.connect(self._source_changed)

        source = QGroupBox("Model")
        sv = QVBoxLayout(source)
        sv.addWidget(self.bundled_radio)
        row = QHBoxLayout()
        row.addWidget(self.preset_radio)
        row.addWidget(self.preset_combo, 1)
        sv.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.folder_radio)
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        sv.addLayout(row)

        self.summary = QLabel("-")
        self.summary.setTextFormat(Qt.PlainText)
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        info = QGroupBox("What it is")
        QVBoxLayout(info).addWidget(self.summary)

        self.backend_combo = QComboBox()
        for key, text in BACKENDS.items():
            self.backend_combo.addItem(text, key)
        self.precision_combo = QComboBox()
        for key, text in PRECISIONS.items():
            self.precision_combo.addItem(text, key)
        self.backend_combo.currentIndexChanged.connect(
            lambda: state.set_model(backend=self.backend_combo.currentData()))
        self.precision_combo.currentIndexChanged.connect(
            lambda: state.set_model(precision=self.precision_combo.currentData()))
        runtime = QGroupBox("Runtime")
        form = QFormLayout(runtime)
        form.addRow("Keras backend:", self.backend_combo)
        form.addRow("Precision:", self.precision_combo)
        note = QLabel("Each run trains in its own process, so any backend can be chosen per run. "
                      "Mixed bfloat16 is fastest where the hardware has bf16 arithmetic.")
        note.setWordWrap(True)
        form.addRow(note)

        layout = QVBoxLayout(self)
        layout.addWidget(source)
        layout.addWidget(info)
        layout.addWidget(runtime)
        layout.addStretch(1)
        self.sync_from_state()
        self._describe()

    def sync_from_state(self):
        m = self.state.model
        self.backend_combo.setCurrentIndex(max(0, self.backend_combo.findData(m.backend)))
        self.precision_combo.setCurrentIndex(max(0, self.precision_combo.findData(m.precision)))

    def choose_folder(self):
        folder = QFileDialog.getExistingDirectory(self, "Checkpoint folder")
        if folder:
            self.folder_edit.setText(folder)
            self.folder_radio.setChecked(True)
            self._source_changed()

    def current_source(self):
        if self.preset_radio.isChecked():
            return self.preset_combo.currentText()
        if self.folder_radio.isChecked():
            return self.folder_edit.text().strip()
        return "bundled"

    def _source_changed(self, *_):
        source = self.current_source()
        if source and source != self.state.model.source:
            self.state.set_model(source=source)
            self._describe()

    def _describe(self):
        source = self.state.model.source
        self.summary.setText(f"Reading {source} …")
        run_async(lambda: describe_model(source), self._show,
                  lambda e, _t: (self.summary.setText(f"Cannot use this model: {e}")
                                 if source == self.state.model.source else None))

    def _show(self, info):
        if info["source"] != self.state.model.source:
            return  # a newer choice is being described
        self.summary.setText(
            f"{info['title']}\n{info['layers']} layers, hidden size {info['hidden']}, "
            f"{info['heads']} heads, feed-forward {info['intermediate']}\n"
            f"{info['parameters'] / 1e6:.1f} M parameters "
            f"({info['parameters'] * 4 / 2**20:.0f} MiB in float32)\n"
            f"vocabulary: {info['vocabulary']:,} word pieces"
            + (f", {info['casing']}" if info.get("casing") else ""))
