"""The main window: a page list on the left (Data, Model, Train, Evaluate,
Inspect, Export) over one `AppState`; recent files and choices remembered."""

from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QHBoxLayout, QListWidget, QMainWindow, QMessageBox,
                               QStackedWidget, QWidget)

from bertdesk_gui.pages.data_page import DataPage
from bertdesk_gui.pages.evaluate_page import EvaluatePage
from bertdesk_gui.pages.export_page import ExportPage
from bertdesk_gui.pages.inspect_page import InspectPage
from bertdesk_gui.pages.model_page import ModelPage
from bertdesk_gui.pages.train_page import TrainPage
from bertdesk_gui.state import BACKENDS, PRECISIONS, AppState, home
from bertdesk_gui.worker import wait_idle

PAGES = ["Data", "Model", "Train", "Evaluate", "Inspect", "Export"]
MAX_RECENT = 8


class MainWindow(QMainWindow):
    def __init__(self, state=None, settings=None):
        super().__init__()
        self.setWindowTitle("bertdesk")
        self.resize(1280, 800)
        self.state = state or AppState()
        self.settings = settings or QSettings(str(home() / "settings.ini"), QSettings.IniFormat)

        self.data_page = DataPage(self.state)
        self.model_page = ModelPage(self.state)
        self.train_page = TrainPage(self.state)
        self.evaluate_page = EvaluatePage(self.state)
        self.inspect_page = InspectPage(self.state)
        self.export_page = ExportPage(self.state)
        self.pages = dict(zip(PAGES, (self.data_page, self.model_page, self.train_page,
                                      self.evaluate_page, self.inspect_page, self.export_page)))
        self.nav = QListWidget()
        self.nav.addItems(PAGES)
        self.nav.setFixedWidth(120)
        self.stack = QStackedWidget()
        for page in self.pages.values():
            self.stack.addWidget(page)
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.addWidget(self.nav)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self.data_page.loaded.connect(self._dataset_loaded)
        # a finished run reaches Evaluate/Inspect/Export through state.run_changed
        self.train_page.run_finished.connect(self._run_finished)
        self.train_page.open_run.connect(self._open_run)
        self.evaluate_page.cell_selected.connect(self._confusion_cell)
        self.state.model_changed.connect(lambda m: self._remember("model", m))
        self._build_menu()
        self._restore()
        self.go("Data")
        self.statusBar().showMessage("Open a dataset to start.")

    # --- navigation ---

    def go(self, name):
        self.nav.setCurrentRow(PAGES.index(name))

    def current_page(self):
        return PAGES[self.stack.currentIndex()]

    def show_run(self, run):
        """Show a run's results on Evaluate, Inspect and Export."""
        if not run:
            return
        self.state.current_run = run["id"]
        for page in (self.evaluate_page, self.inspect_page, self.export_page):
            page.show_run(run)
        status = run.get("status")
        self.statusBar().showMessage(f"run {run['id']}: {status}")
        if status == "finished":
            self.go("Evaluate")

    def _run_finished(self, run):
        # the pages may show an older run the user opened meanwhile: the one
        # that ended is what the status bar names and Evaluate shows
        self.show_run(run)

    def _open_run(self, run):
        self.show_run(run)
        self.go("Evaluate")

    def _confusion_cell(self, gold, predicted):
        self.inspect_page.set_filter(gold=gold, predicted=predicted)
        self.go("Inspect")

    def _dataset_loaded(self, ds):
        self._add_recent(ds.path)
        self.statusBar().showMessage(f"{Path(ds.path).name}: {len(ds.frame):,} rows")

    # --- menu, settings ---

    def _build_menu(self):
        menu = self.menuBar().addMenu("&File")
        act = QAction("&Open dataset…", self)
        act.setShortcut(QKeySequence.Open)
        act.triggered.connect(self.data_page.choose_file)
        menu.addAction(act)
        self.recent_menu = menu.addMenu("Open &recent")
        menu.addSeparator()
        act = QAction("&Quit", self)
        act.setShortcut(QKeySequence.Quit)
        act.triggered.connect(self.close)
        menu.addAction(act)

    def recent_files(self):
        value = self.settings.value("recent_files", [])
        return [value] if isinstance(value, str) else list(value or [])

    def _add_recent(self, path):
        files = [path] + [f for f in self.recent_files() if f != path]
        self.settings.setValue("recent_files", files[:MAX_RECENT])
        self._fill_recent()

    def _fill_recent(self):
        self.recent_menu.clear()
        for path in self.recent_files():
            act = self.recent_menu.addAction(path)
            act.triggered.connect(lambda _=False, p=path: self.data_page.open(p))

    def _remember(self, key, model):
        self.settings.setValue("model/source", model.source)
        self.settings.setValue("model/backend", model.backend)
        self.settings.setValue("model/precision", model.precision)

    def _restore(self):
        self._fill_recent()
        # values another version or a hand edit left are dropped, not shown
        # as the combo's first item while the run uses them
        backend = self.settings.value("model/backend")
        backend = backend if backend in BACKENDS else None
        precision = self.settings.value("model/precision")
        precision = precision if precision in PRECISIONS else None
        if backend or precision:
            self.state.set_model(**{k: v for k, v in (("backend", backend),
                                                      ("precision", precision)) if v})
            self.model_page.sync_from_state()
        runs = self.state.history.runs
        if runs:
            self.show_run(runs[-1])

    def closeEvent(self, event):
        if self.train_page.is_running():
            answer = QMessageBox.question(
                self, "bertdesk", "A run is in progress. Stop it and quit?",
                QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
            if answer != QMessageBox.Yes:
                event.ignore()
                return
        self.shutdown()
        event.accept()

    def shutdown(self):
        self.train_page.shutdown()
        wait_idle()
        self.settings.sync()

