"""The desktop app end to end through its widgets, as a person uses it:
open a file, map columns, pick a model, train in a child process while
progress and curves arrive, cancel, survive bad files and a crashing child.
Each test saves a screenshot of its page in tests/output/screenshots/."""

import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytestmark = pytest.mark.backend_neutral

from PySide6.QtCore import QSettings, Qt, QThreadPool  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHOTS = Path(__file__).resolve().parent / "output" / "screenshots"


def screenshot(widget, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    QApplication.processEvents()
    assert widget.grab().save(str(SHOTS / f"{name}.png"))


def child_pids():
    """Live child processes of this test process (Linux /proc)."""
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == me and fields[0] != "Z":
                out.append(int(entry.name))
    return out


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTDESK_HOME", str(tmp_path / "home"))
    from bertdesk_gui.main_window import MainWindow
    from bertdesk_gui.state import AppState
    from bertdesk_gui.worker import wait_idle

    before = set(child_pids())
    state = AppState(history_path=tmp_path / "home" / "runs.json", runs_dir=tmp_path / "runs")
    w = MainWindow(state, QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()
    assert wait_idle(10000)
    from PySide6.QtCore import QThreadPool

    assert QThreadPool.globalInstance().activeThreadCount() == 0, "a worker thread is left"
    left = set(child_pids()) - before
    assert not left, f"child processes left running: {left}"


def open_file(qtbot, w, path):
    with qtbot.waitSignal(w.data_page.loaded, timeout=30000):
        w.data_page.open(str(path))
    return w.state.dataset


def choose_tiny(qtbot, w, folder, backend="torch"):
    w.go("Model")
    page = w.model_page
    page.folder_edit.setText(folder)
    page.folder_radio.setChecked(True)
    page._source_changed()
    page.backend_combo.setCurrentIndex(page.backend_combo.findData(backend))
    qtbot.waitUntil(lambda: "2 layers" in page.summary.text(), timeout=20000)
    assert w.state.model.source == folder and w.state.model.backend == backend


def set_form(w, **values):
    for key, value in values.items():
        w.train_page.fields[key].setValue(value)


def test_open_map_and_bad_rows(qtbot, window, tmp_path):
    w = window
    ds = open_file(qtbot, w, ASSETS / "sentiment_en.csv")
    assert ds.task == "classify" and (ds.text_column, ds.label_column) == ("text", "label")
    page = w.data_page
    assert len(ds.frame) == 1200 and "1,200 rows" in page.rows_label.text()
    assert page.preview_model.rowCount() == 500  # rows come in chunks as the view scrolls
    page.preview.scrollToBottom()
    qtbot.waitUntil(lambda: page.preview_model.rowCount() > 500, timeout=5000)
    counts = {page.labels_table.item(i, 0).text(): int(page.labels_table.item(i, 1).text())
              for i in range(page.labels_table.rowCount())}
    assert counts == ds.frame["label"].value_counts().to_dict()
    assert page.bad_box.isHidden()
    assert "120 of 1,200" in page.split_label.text()
    screenshot(w, "data_page")
    w.show()
    w.go("Train")  # another fraction there: the Data page says so when shown again
    w.train_page.fields["validation_fraction"].setValue(0.25)
    w.go("Data")
    assert "300 of 1,200 (25%)" in page.split_label.text()
    w.train_page.fields["validation_fraction"].setValue(0.1)

    # a file with bad rows: listed with their reasons; the file is never changed
    bad = tmp_path / "bad.csv"
    bad.write_text("review,sentiment\ngreat film,positive\n,negative\nawful,\n"
                   "fine,positive\n<b>bold</b> claim,negative\n", encoding="utf-8")
    original = bad.read_bytes()
    ds = open_file(qtbot, w, bad)
    assert (ds.text_column, ds.label_column) == ("review", "sentiment")
    assert ds.bad_rows == [(2, "empty text in column 'review'"),
                           (3, "missing label in column 'sentiment'")]
    assert not page.bad_box.isHidden() and page.bad_table.rowCount() == 2
    assert page.bad_table.item(1, 1).text() == "missing label in column 'sentiment'"
    # a 100k-row file previews without building every row
    big = tmp_path / "big.csv"
    big.write_text("text,label\n" + "".join(f"sentence {i},{i % 3}\n" for i in range(100_000)))
    ds = open_file(qtbot, w, big)
    assert len(ds.frame) == 100_000 and page.preview_model.rowCount() == 500
    assert bad.read_bytes() == original


def test_the_runs_arguments_keep_the_users_columns_and_file(tmp_path, monkeypatch):
    """Column names starting with "-" were read by the command line as flags
    (the run failed: "expected one argument"); the longest column was
    guessed as the text even when it was the pair's (the run trained on
    the hypothesis twice); a file opened by a relative name was recorded so
    (--train, recent files and the run's record pointed elsewhere from
    another working folder)."""
    from bertdesk.cli import build_parser
    from bertdesk_gui.state import AppState, load_dataset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.csv").write_text(
        "-x,hypothesis,--notes\nshort,a much longer second sentence here,yes\n"
        "tiny,another long hypothesis sentence,no\n", encoding="utf-8")
    ds = load_dataset("pairs.csv")
    assert ds.path == str(tmp_path / "pairs.csv")
    assert (ds.text_column, ds.text_pair_column) == ("-x", "hypothesis")
    state = AppState(history_path=tmp_path / "runs.json", runs_dir=tmp_path / "runs")
    state.set_dataset(ds)
    state.set_mapping(label_column="--notes")
    assert state.ready() is None
    args = build_parser().parse_args(state.new_run()["args"])
    assert (args.text_column, args.text_pair_column, args.label_column) == \
        ("-x", "hypothesis", "--notes")
    assert args.train == str(tmp_path / "pairs.csv")
    state.set_mapping(text_pair_column="-x")
    assert "the text pair column is the text column" in state.ready()


def test_a_bio_file_of_words_is_read_as_words(tmp_path):
    """`.bio` and `.ner` files were always read as one character a line: a
    word-level file's words were joined without spaces, and the run told
    the model it tags characters."""
    from bertdesk_gui.state import load_dataset

    words = tmp_path / "words.bio"
    words.write_text("EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn "
                     "I-PER\n", encoding="utf-8")
    chars = tmp_path / "chars.ner"
    tags = ["O", "O", "B-LOC", "I-LOC", "O", "O", "O"]
    chars.write_text("".join(f"{c} {t}\n" for c, t in zip("我爱北京天安门", tags)),
                     encoding="utf-8")
    ds = load_dataset(words)
    assert ds.format == "conll" and list(ds.frame["text"]) == ["EU rejects German call",
                                                                "Peter Blackburn"]
    ds = load_dataset(chars)
    assert ds.format == "bmes" and list(ds.frame["text"]) == ["我爱北京天安门"]


def test_the_label_table_counts_labels_as_the_run_reads_them(tmp_path):
    """The Data page's label counts took whole cells: 1 and 1.0 were two
    labels (the run reads one), a multi-label cell "a,b" one label, and a
    regression target listed every number."""
    from bertdesk_gui.state import load_dataset

    path = tmp_path / "labels.csv"
    path.write_text("text,label\na,1\nb,1.0\nc,2\nd,\"1,2\"\n", encoding="utf-8")
    ds = load_dataset(path)
    ds.label_column = "label"
    ds.problem_type = "single_label"
    ds.bad_rows = [(4, "not a label of its own")]
    assert ds.label_counts() == {"1": 2, "2": 1}
    ds.problem_type, ds.bad_rows = "multi_label", []
    assert ds.label_counts() == {"1": 3, "2": 2}
    ds.problem_type = "regression"
    assert ds.label_counts() == {}


def test_mapping_changes_are_checked(qtbot, window, tmp_path):
    w = window
    path = tmp_path / "pairs.csv"
    path.write_text("sentence1,sentence2,score\na cat,a dog,1.5\nrain,sun,x\n", encoding="utf-8")
    ds = open_file(qtbot, w, path)
    assert (ds.text_column, ds.text_pair_column, ds.label_column) == \
        ("sentence1", "sentence2", "score")
    page = w.data_page
    assert w.train_page.balance_box.isEnabled()  # guessed: classification
    page.problem_combo.setCurrentIndex(page.problem_combo.findData("regression"))
    assert ds.problem_type == "regression"
    assert not w.train_page.balance_box.isEnabled()  # no class weights for a number
    page.problem_combo.setCurrentIndex(page.problem_combo.findData("multi_label"))
    assert w.train_page.balance_box.isEnabled()
    page.problem_combo.setCurrentIndex(page.problem_combo.findData("regression"))
    assert ds.bad_rows == [(2, "label 'x' in column 'score' is not a finite number")]
    page.fix_radio.setChecked(True)
    assert "bad rows" in w.state.ready()
    page.drop_radio.setChecked(True)
    assert w.state.ready() is None
    # the file opened again (fixed, say): the mapping and the label kind chosen stay
    ds = open_file(qtbot, w, path)
    assert (ds.label_column, ds.problem_type) == ("score", "regression")
    assert page.problem_combo.currentData() == "regression"
    # refused before a run folder is made, where the child would fail after loading
    w.state.set_mapping(label_column="sentence1", problem_type="single_label")
    assert "the label column is also a text column" in w.state.ready()
    w.state.set_mapping(label_column="score", problem_type="single_label")
    assert w.state.ready() is None  # 1.5 and x: two labels
    one = tmp_path / "one.csv"
    one.write_text("text,label\na,pos\nb,pos\nc,pos\n", encoding="utf-8")
    open_file(qtbot, w, one)
    assert "holds one label only" in w.state.ready()
    # the file edited after it was checked: a run would read what was never checked
    one.write_text("text,label\na,pos\nb,neg\nc,pos\nd,\n", encoding="utf-8")
    assert "one.csv changed on disk since it was opened" in w.state.ready()
    ds = open_file(qtbot, w, one)
    assert w.state.ready() is None and ds.bad_rows == [(4, "missing label in column 'label'")]


def test_corrupt_and_unreadable_files(qtbot, window, tmp_path):
    w = window
    binary = tmp_path / "data.csv"
    binary.write_bytes(b"text,label\n\xff\xfe\x00\x81 broken,1\n")
    with qtbot.waitSignal(w.data_page.load_failed, timeout=20000) as blocker:
        w.data_page.open(str(binary))
    assert "data.csv" in blocker.args[0] and "UTF-8" in blocker.args[0]
    assert not w.data_page.error_label.isHidden()
    screenshot(w, "data_page_error")
    conll = tmp_path / "broken.conll"
    conll.write_text("EU B-ORG\nrejects\n", encoding="utf-8")
    with qtbot.waitSignal(w.data_page.load_failed, timeout=20000) as blocker:
        w.data_page.open(str(conll))
    assert "broken.conll" in blocker.args[0] and "line 2" in blocker.args[0]
    assert w.state.dataset is None and "open a dataset" in w.state.ready()
    # a table with a text column and nothing to learn from: no label column to map
    only_text = tmp_path / "only_text.csv"
    only_text.write_text("text\nfirst\nsecond\n", encoding="utf-8")
    ds = open_file(qtbot, w, only_text)
    assert ds.label_column is None and "label columns" in w.state.ready()
    assert w.data_page.label_combo.currentText() == "(none)"
    assert not w.train_page.start() and "label columns" in w.train_page.status_label.text()
    # the app is still usable
    open_file(qtbot, w, ASSETS / "sentiment_en.csv")
    assert w.state.ready() is None
    # a file that cannot be read leaves the one opened before in use, and says so
    with qtbot.waitSignal(w.data_page.load_failed, timeout=20000):
        w.data_page.open(str(tmp_path / "gone.csv"))
    assert w.state.dataset.path == str(ASSETS / "sentiment_en.csv")
    assert w.data_page.path_label.text() == (f"Could not open gone.csv; still using "
                                             f"{ASSETS / 'sentiment_en.csv'}")
    # two opens in a row: the first read, whenever it ends, does not replace the second
    from bertdesk_gui.pages import data_page as module

    first, reads = threading.Event(), []

    def load(path, previous=None):
        reads.append(path)
        if path.endswith("only_text.csv"):
            first.wait(20)  # the earlier, slower read
        return real_load(path, previous)

    real_load = module.load_dataset
    module.load_dataset = load
    try:
        w.data_page.open(str(only_text))
        with qtbot.waitSignal(w.data_page.loaded, timeout=20000):
            w.data_page.open(str(ASSETS / "sentiment_en.csv"))
        first.set()
        qtbot.waitUntil(lambda: len(reads) == 2 and QThreadPool.globalInstance().activeThreadCount()
                        == 0, timeout=20000)
        QApplication.processEvents()
    finally:
        module.load_dataset = real_load
    assert w.state.dataset.path == str(ASSETS / "sentiment_en.csv")


def test_train_with_live_progress_then_results(qtbot, window, tiny_model, tmp_path,
                                               monkeypatch):
    w = window
    open_file(qtbot, w, ASSETS / "sentiment_en.csv")
    choose_tiny(qtbot, w, tiny_model)
    screenshot(w, "model_page")
    w.go("Train")
    set_form(w, epochs=2, batch_size=32, learning_rate=3e-3, max_length=32)
    assert w.train_page.balance_box.isEnabled()  # classification
    w.train_page.balance_box.setChecked(True)
    steps = []
    w.train_page.process.event.connect(lambda e: e["event"] == "step" and steps.append(e))
    assert w.train_page.start()
    assert not w.train_page.start_button.isEnabled() and w.train_page.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: len(steps) >= 5, timeout=90000)
    assert len(w.train_page.loss_curve.getData()[0]) >= 5  # the curve grows
    screenshot(w, "train_page_running")
    with qtbot.waitSignal(w.train_page.run_finished, timeout=180000) as blocker:
        pass
    run = blocker.args[0]
    assert run["status"] == "finished", run.get("error")
    assert [e["step"] for e in steps] == list(range(1, steps[-1]["total_steps"] + 1))
    assert steps[-1]["total_steps"] == 2 * 34  # 1,080 training rows / 32, two epochs
    assert len(w.train_page.metric_curves["accuracy"].getData()[0]) == 2
    assert 0 <= run["metrics"]["accuracy"] <= 1
    assert run["args"][run["args"].index("--class-weight") + 1] == "balanced"
    assert "class weights: negative " in w.train_page.log_view.toPlainText()
    assert Path(run["output"], "model", "bertdesk.json").is_file()
    # the history is on disk and reopens in a new state object (an app restart)
    from bertdesk_gui.state import RunHistory

    again = RunHistory(tmp_path / "home" / "runs.json")
    assert again.get(run["id"])["metrics"] == run["metrics"]
    assert w.train_page.history_table.rowCount() == 1
    assert w.current_page() == "Evaluate"
    screenshot(w.train_page, "train_page_finished")
    walk_results(qtbot, w, run, tmp_path, monkeypatch)


def walk_results(qtbot, w, run, tmp_path, monkeypatch):
    """After a run: its metrics, the wrong predictions, one of them opened,
    and the exports, through the pages' widgets."""
    import pandas as pd
    from PySide6.QtWidgets import QFileDialog

    from bertdesk_gui.pages.evaluate_page import summary_text

    assert summary_text(run["metrics"], run["task"]) in w.evaluate_page.summary.text()
    screenshot(w, f"evaluate_{run['task']}_after_training")
    w.go("Inspect")
    preds = pd.read_csv(Path(run["output"]) / "validation_predictions.csv", dtype=str,
                        keep_default_na=False)
    page = w.inspect_page
    if "correct" in preds:
        page.correct_combo.setCurrentText("Wrong")
        assert len(page.view) == (preds["correct"] == "False").sum()
        page.correct_combo.setCurrentText("All")
    assert len(page.view) == len(preds)
    page.table.selectRow(0)
    QApplication.processEvents()
    assert page.browser.toPlainText().strip()
    screenshot(w, f"inspect_{run['task']}_after_training")
    w.go("Export")
    out = tmp_path / "exports"
    out.mkdir()
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(out / "report.html"), "HTML (*.html)")))
    w.export_page.report_button.click()
    assert (out / "report.html").is_file()
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(out / "p.jsonl"), "JSON lines")))
    w.export_page.predictions_button.click()
    assert len(pd.read_json(out / "p.jsonl", lines=True)) == len(preds)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(out / "model")))
    w.export_page.copy_button.click()
    assert (out / "model" / "bertdesk.json").is_file()


def test_cancel_stops_the_child_within_seconds(qtbot, window, tiny_model):
    w = window
    open_file(qtbot, w, ASSETS / "sentiment_en.csv")
    choose_tiny(qtbot, w, tiny_model)
    w.go("Train")
    set_form(w, epochs=200, max_length=32)
    steps = []
    w.train_page.process.event.connect(lambda e: e["event"] == "step" and steps.append(e))
    epochs = []
    w.train_page.process.event.connect(lambda e: e["event"] == "epoch" and epochs.append(e))
    assert w.train_page.start()
    qtbot.waitUntil(lambda: len(epochs) >= 1 and len(steps) >= 3, timeout=120000)
    pid = w.train_page.process.pid()
    assert pid in child_pids()
    with qtbot.waitSignal(w.train_page.run_finished, timeout=8000) as blocker:
        w.train_page.cancel()
    assert blocker.args[0]["status"] == "cancelled"
    assert pid not in child_pids()
    assert w.train_page.start_button.isEnabled() and not w.train_page.cancel_button.isEnabled()
    assert "Cancelled" in w.train_page.status_label.text()
    screenshot(w.train_page, "train_page_cancelled")
    # the model saved after the first epoch is intact and loads
    from bertdesk.tasks.saving import load_model

    model = load_model(Path(blocker.args[0]["output"]) / "model")
    assert model.labels == ["negative", "positive"]


def test_crashing_child_is_reported_and_the_app_stays_usable(qtbot, window, tiny_model,
                                                             tmp_path):
    w = window
    open_file(qtbot, w, ASSETS / "sentiment_en.csv")
    # 1. a model folder that is not a checkpoint: the child's own error message
    broken = tmp_path / "not_a_model"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json", encoding="utf-8")
    w.state.set_model(source=str(broken), backend="torch")
    w.go("Train")
    set_form(w, epochs=1, max_length=32)
    with qtbot.waitSignal(w.train_page.run_finished, timeout=90000) as blocker:
        assert w.train_page.start()
    run = blocker.args[0]
    assert run["status"] == "failed" and "config.json" in run["error"]
    assert "Failed" in w.train_page.status_label.text()
    # 2. the child dies mid-run (killed, as by the OOM killer)
    choose_tiny(qtbot, w, tiny_model)
    w.go("Train")
    set_form(w, epochs=200)
    steps = []
    w.train_page.process.event.connect(lambda e: e["event"] == "step" and steps.append(e))
    assert w.train_page.start()
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=90000)
    with qtbot.waitSignal(w.train_page.run_finished, timeout=10000) as blocker:
        os.kill(w.train_page.process.pid(), signal.SIGKILL)
    assert blocker.args[0]["status"] == "failed"
    screenshot(w.train_page, "train_page_failed")
    # 3. and the next run works
    set_form(w, epochs=1)
    with qtbot.waitSignal(w.train_page.run_finished, timeout=180000) as blocker:
        assert w.train_page.start()
    assert blocker.args[0]["status"] == "finished"
    assert [r["status"] for r in w.state.history.runs] == ["failed", "failed", "finished"]


@pytest.mark.parametrize("source,task", [("ner_en.conll", "ner"), ("qa_en.json", "qa")])
def test_ner_and_qa_files(qtbot, window, tiny_model, source, task, tmp_path, monkeypatch):
    w = window
    ds = open_file(qtbot, w, ASSETS / source)
    assert ds.task == task
    assert w.data_page.task_label.text().startswith("Token" if task == "ner" else "Extractive")
    if task == "ner":
        assert {"PER", "ORG", "LOC"} <= set(ds.label_counts())
    screenshot(w, f"data_page_{task}")
    choose_tiny(qtbot, w, tiny_model)
    w.go("Train")
    assert not w.train_page.balance_box.isEnabled()  # class weights: classification only
    w.train_page.balance_box.setChecked(True)  # left checked from a classification run
    accumulation = 2 if task == "ner" else 1  # the form reaches the child's command line
    set_form(w, epochs=1, max_length=64, learning_rate=3e-3, gradient_accumulation=accumulation)
    checkpointing = task == "qa"
    w.train_page.checkpointing_box.setChecked(checkpointing)
    with qtbot.waitSignal(w.train_page.run_finished, timeout=240000) as blocker:
        assert w.train_page.start()
    run = blocker.args[0]
    assert run["status"] == "finished", run.get("error")
    assert ("--gradient-checkpointing" in run["args"]) == checkpointing
    assert run["settings"]["gradient_checkpointing"] == checkpointing
    assert ("--gradient-accumulation" in run["args"]) == (accumulation > 1)
    assert run["settings"]["gradient_accumulation"] == accumulation
    assert "--class-weight" not in run["args"]
    assert run["settings"]["balanced_class_weights"] is False  # as the run was made
    if accumulation > 1:
        assert run["args"][run["args"].index("--gradient-accumulation") + 1] == "2"
        assert "one update every 2 batches" in w.train_page.log_view.toPlainText()
    assert set(run["metrics"]) >= ({"precision", "recall", "f1"} if task == "ner"
                                   else {"exact_match", "f1"})
    screenshot(w, f"train_page_{task}")
    walk_results(qtbot, w, run, tmp_path, monkeypatch)



def test_drop_a_file_and_remember_it(qtbot, window, tmp_path):
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDropEvent

    w = window
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(ASSETS / "pairs_en.csv"))])
    event = QDropEvent(QPointF(10, 10), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    with qtbot.waitSignal(w.data_page.loaded, timeout=30000):
        w.data_page.dropEvent(event)
    assert w.state.dataset.path.endswith("pairs_en.csv")
    assert w.recent_files()[0].endswith("pairs_en.csv")
    # a new window on the same settings offers it again, and keeps the backend choice
    w.state.set_model(backend="jax")
    from bertdesk_gui.main_window import MainWindow
    from bertdesk_gui.state import AppState

    again = MainWindow(AppState(history_path=tmp_path / "h2.json", runs_dir=tmp_path / "r2"),
                       w.settings)
    qtbot.addWidget(again)
    assert [a.text() for a in again.recent_menu.actions()][0].endswith("pairs_en.csv")
    assert again.state.model.backend == "jax"
    assert again.model_page.backend_combo.currentData() == "jax"
    again.shutdown()


def test_launchers():
    from importlib.metadata import entry_points

    from bertdesk.cli import build_parser

    scripts = {e.name: e.value for e in entry_points(group="gui_scripts")}
    assert scripts.get("bertdesk-gui") == "bertdesk_gui.app:main"
    args = build_parser().parse_args(["gui", "data.csv"])
    assert args.files == ["data.csv"] and args.func.__name__ == "_cmd_gui"


@pytest.mark.parametrize("damaged", [b"\xff\xfe not UTF-8", b'{"runs": []}', b"[1, 2]",
                                     b'[{"id": 1}, {"no id": 2}]', b"[{"])
def test_a_damaged_run_history_is_kept_aside(tmp_path, damaged):
    # the app starts with an empty history and the file moved aside, untouched
    from bertdesk_gui.state import RunHistory

    path = tmp_path / "runs.json"
    path.write_bytes(damaged)
    history = RunHistory(path)
    assert history.runs == [] and not path.exists()
    [aside] = tmp_path.glob("runs.damaged-*.json")
    assert aside.read_bytes() == damaged
    history.add({"id": "a", "status": "done"})
    assert RunHistory(path).get("a") == {"id": "a", "status": "done", "app_pid": os.getpid()}


def test_a_run_left_running_by_a_closed_app_reads_as_interrupted(tmp_path):
    from bertdesk_gui.pages.evaluate_page import no_results_message
    from bertdesk_gui.state import RunHistory

    path = tmp_path / "runs.json"
    path.write_text(json.dumps([{"id": "a", "status": "finished"},
                                {"id": "b", "status": "running"}]))
    history = RunHistory(path)
    assert [r["status"] for r in history.runs] == ["finished", "interrupted"]
    assert "was interrupted" in no_results_message(history.get("b"))


def test_two_windows_keep_each_others_runs(tmp_path):
    """Each window wrote its own list over runs.json: the other's runs went
    from the history, and a run another live app was training read as
    interrupted."""
    from bertdesk_gui.state import RunHistory

    path = tmp_path / "runs.json"
    path.write_text(json.dumps([{"id": "old", "status": "finished"},
                                {"id": "live", "status": "running", "app_pid": os.getppid()},
                                {"id": "gone", "status": "running", "app_pid": 2**22 + 7}]))
    first, second = RunHistory(path), RunHistory(path)
    assert [r["status"] for r in first.runs] == ["finished", "running", "interrupted"]
    first.add({"id": "a", "status": "running"})
    second.add({"id": "b", "status": "running"})
    first.update("a", status="finished", metrics={"accuracy": 1.0})
    on_disk = {r["id"]: r for r in json.loads(path.read_text())}
    assert list(on_disk) == ["old", "live", "gone", "a", "b"]
    assert on_disk["a"]["status"] == "finished" and on_disk["b"]["status"] == "running"
    assert on_disk["live"]["status"] == "running" and on_disk["gone"]["status"] == "interrupted"
    assert [r["id"] for r in first.runs] == list(on_disk)  # each sees the other's runs
    assert RunHistory(path).get("b")["status"] == "interrupted"  # its app: this process


def test_settings_from_another_version_are_not_applied(qtbot, tmp_path, monkeypatch):
    from bertdesk_gui.main_window import MainWindow

    monkeypatch.setenv("BERTDESK_HOME", str(tmp_path / "home"))
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    settings.setValue("model/backend", "mxnet")
    settings.setValue("model/precision", "mixed_bfloat16")
    w = MainWindow(settings=settings)
    qtbot.addWidget(w)
    assert w.state.model.backend == "torch"  # the default, as the combo shows
    assert w.state.model.precision == "mixed_bfloat16"


def test_a_cancel_after_the_result_keeps_the_finished_run(qtbot):
    # the child wrote its result and is exiting; a Cancel pressed meanwhile
    # (its SIGTERM made the exit a crash) does not turn the finished run into
    # a cancelled one
    from bertdesk_gui.training_process import TrainingProcess

    process = TrainingProcess()
    script = ("import json, sys, time; print(json.dumps({'event': 'result', 'metrics': {}}),"
              " flush=True); time.sleep(1); sys.stdout.write(json.dumps({'event': 'message',"
              " 'text': 'last'}))")
    events = []
    process.event.connect(events.append)
    with qtbot.waitSignal(process.finished, timeout=30000) as blocker:
        process.start([], program=[sys.executable, "-c", script])
        qtbot.waitUntil(lambda: any(e["event"] == "result" for e in events), timeout=20000)
        process.cancel()
    assert blocker.args[0] == "finished"
    assert events[-1] == {"event": "message", "text": "last"}  # the line without its newline


def test_qa_summary_shows_the_null_threshold_in_logits():
    from bertdesk_gui.pages.evaluate_page import format_value, summary_text

    metrics = {"exact_match": 50.0, "f1": 62.5, "total": 8, "null_threshold": -0.25,
               "best_f1": 62.5, "best_f1_thresh": -0.25}
    assert summary_text(metrics, "qa") == ("exact match 50.00 %,  F1 62.50 %,  questions 8,  "
                                           "null threshold -0.25")
    assert "null threshold" not in summary_text(dict(metrics, null_threshold=None), "qa")
    assert [format_value(k, -0.25, "qa") for k in ("best_f1_thresh", "best_f1")] == [
        "-0.25", "-0.25 %"]


def test_qa_rows_show_no_answer_in_words():
    import pandas as pd

    from bertdesk_gui.inspect_views import display_frame

    frame = pd.DataFrame({"id": ["a", "b"], "correct": [True, False], "f1": [1.0, 0.0],
                          "question": ["Who?", "Where?"], "prediction": ["", "Ana"],
                          "gold": ["", "Oslo"]})
    shown = display_frame(frame, "qa")
    assert shown["prediction"].tolist() == ["(no answer)", "Ana"]
    assert shown["gold"].tolist() == ["(no answer)", "Oslo"]
    assert frame["prediction"].tolist() == ["", "Ana"]  # the data itself is left as it is


def test_the_qa_view_highlights_the_answer_where_the_model_found_it():
    from bertdesk_gui.inspect_views import qa_html

    context = "Paris is far. The capital of France is Paris."
    row = {"question": "Capital?", "prediction": "Paris", "gold": "Paris", "f1": "1.0",
           "correct": "True", "start": str(context.rindex("Paris"))}
    mark = '<span style="background-color:#ffd54f"><b>Paris</b></span>'
    assert f"France is {mark}." in qa_html(row, context)
    del row["start"]  # a run from before: its first occurrence, as before
    assert f"<p>{mark} is far" in qa_html(row, context)
