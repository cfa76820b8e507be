"""The results pages (Evaluate, Inspect, Export) on real runs: a tiny model
fine-tuned in this process on the bundled samples, its output folder read
by the pages as the app would. Each test saves a screenshot of its page to
tests/output/screenshots/."""

import csv
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import QThreadPool, Qt  # noqa: E402
from PySide6.QtGui import QTextCursor, QTextDocument  # noqa: E402
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox  # noqa: E402

from bertdesk.training.finetune import FinetuneConfig, run_finetune  # noqa: E402
from bertdesk_gui.pages.evaluate_page import EvaluatePage  # noqa: E402
from bertdesk_gui.pages.export_page import (ExportError, ExportPage, copy_model,  # noqa: E402
                                            export_transformers,
                                            export_predictions, export_report_html,
                                            export_report_pdf)
from bertdesk_gui.pages.inspect_page import InspectPage  # noqa: E402
from bertdesk_gui.state import AppState, TrainSettings  # noqa: E402
from bertdesk_gui.worker import wait_idle  # noqa: E402

pytestmark = pytest.mark.backend_neutral

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHOTS = Path(__file__).resolve().parent / "output" / "screenshots"
MARKUP_TEXT = "<b>bold</b> & a truly brilliant film, highly recommended!"
CHINESE_TEXT = "这部电影非常好看，强烈推荐！"
POSITIVE = "positive <3"  # a label with markup in it: every view must show it as text


def screenshot(widget, name, size=(1000, 720)):
    SHOTS.mkdir(parents=True, exist_ok=True)
    widget.resize(*size)
    widget.show()
    assert widget.grab().save(str(SHOTS / f"{name}.png"))


def make_run(run_id, task, data, output, model, metrics, status="finished", **settings):
    """A run record as `AppState.new_run` and `finish_run` leave it."""
    return {"id": run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "status": status,
            "task": task, "data": str(data), "dropped_rows": 0, "model": str(model),
            "backend": os.environ.get("KERAS_BACKEND", "tensorflow"), "precision": "float32",
            "settings": asdict(TrainSettings(**settings)),
            "output": str(output), "metrics": metrics, "args": [],
            "ended": time.strftime("%Y-%m-%d %H:%M:%S")}


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, tiny_model):
    """Sentiment: 480 training rows, 40 validation rows plus one with markup
    and one in Chinese; the file name and a label carry markup too."""
    folder = tmp_path_factory.mktemp("cls")
    with open(ASSETS / "sentiment_en.csv", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    rows = [[text, POSITIVE if label == "positive" else label] for text, label in rows]
    train, validation = folder / "train <sample> & co.csv", folder / "validation.csv"
    for path, part in ((train, rows[:480]),
                       (validation, rows[480:520] + [[MARKUP_TEXT, POSITIVE],
                                                     [CHINESE_TEXT, POSITIVE]])):
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header] + part)
    result = run_finetune(FinetuneConfig(
        train=str(train), validation=str(validation), output=str(folder / "output"),
        model=tiny_model, epochs=4, batch_size=16, max_length=32, learning_rate=3e-3,
        pad_to_multiple=32))  # one batch shape: one compile
    return make_run("cls-run", "classify", train, folder / "output", tiny_model,
                    result["metrics"], epochs=4, batch_size=16, max_length=32, learning_rate=3e-3)


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("ner")
    blocks = (ASSETS / "ner_en.conll").read_text(encoding="utf-8").split("\n\n")[:150]
    train = folder / "ner.conll"
    train.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    result = run_finetune(FinetuneConfig(
        train=str(train), output=str(folder / "output"), task="ner", format="conll",
        model=tiny_model, epochs=2, batch_size=16, max_length=32, learning_rate=1e-3,
        validation_fraction=0.2, pad_to_multiple=32))
    return make_run("ner-run", "ner", train, folder / "output", tiny_model, result["metrics"],
                    epochs=2, batch_size=16, max_length=32, learning_rate=1e-3,
                    validation_fraction=0.2)


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("qa")
    result = run_finetune(FinetuneConfig(
        train=str(ASSETS / "qa_en.json"), output=str(folder / "output"), task="qa",
        model=tiny_model, epochs=1, batch_size=16, max_length=64, doc_stride=32,
        learning_rate=1e-3))
    return make_run("qa-run", "qa", ASSETS / "qa_en.json", folder / "output", tiny_model,
                    result["metrics"], epochs=1, batch_size=16, max_length=64,
                    learning_rate=1e-3)


@pytest.fixture
def state(tmp_path, cls_run):
    state = AppState(history_path=tmp_path / "runs.json", runs_dir=tmp_path / "runs")
    state.history.add(dict(cls_run))
    state.current_run = cls_run["id"]
    return state


@pytest.fixture
def page(qtbot):
    """Builds pages; afterwards checks that none left a thread or process running."""
    from test_gui import child_pids

    made, before = [], set(child_pids())

    def make(cls, state, run=None):
        p = cls(state)
        qtbot.addWidget(p)
        if run is not None:
            p.show_run(run)
        made.append(p)
        return p

    yield make
    for p in made:
        assert not getattr(p, "busy", lambda: False)(), f"{type(p).__name__} left work running"
    assert wait_idle(5000)  # a job that has reported may take a moment to return
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    assert not set(child_pids()) - before, "a page left a child process running"


def metrics_json(run):
    return json.loads((Path(run["output"]) / "metrics.json").read_text())["metrics"]


def predictions(run):
    return pd.read_csv(Path(run["output"]) / "validation_predictions.csv", dtype=str,
                       keep_default_na=False)


def labels_of(run):
    return json.loads((Path(run["output"]) / "model" / "bertdesk.json").read_text())["head"][
        "labels"]


def click_cell(qtbot, table, row, column):
    rect = table.visualRect(table.model().index(row, column))
    qtbot.mouseClick(table.viewport(), Qt.LeftButton, pos=rect.center())


# === Evaluate ===

def test_evaluate_shows_the_run_metrics_and_confusion_matrix(qtbot, page, state, cls_run):
    ev = page(EvaluatePage, state)  # shows the state's current run by itself
    metrics, labels = metrics_json(cls_run), labels_of(cls_run)
    assert labels == ["negative", POSITIVE]
    assert f"accuracy {metrics['accuracy']:.4f}" in ev.summary.text()
    assert f"macro F1 {metrics['macro_f1']:.4f}" in ev.summary.text()
    table = ev.metrics_table
    assert [table.item(i, 0).text() for i in range(table.rowCount())] == labels
    header = [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]
    f1 = header.index("F1")
    assert [table.item(i, f1).text() for i in range(table.rowCount())] == \
        [f"{r['f1']:.4f}" for r in metrics["per_class"]]

    cm = ev.confusion_table
    assert not ev.confusion_box.isHidden() and cm.rowCount() == cm.columnCount() == 2
    counts = [[int(cm.item(i, j).text()) for j in range(2)] for i in range(2)]
    assert counts == metrics["confusion_matrix"]
    assert sum(map(sum, counts)) == len(predictions(cls_run)) == 42
    assert cm.verticalHeaderItem(1).text() == POSITIVE
    document = QTextDocument()
    document.setHtml(cm.item(1, 0).toolTip())  # Qt shows a tooltip with markup as rich text
    assert document.toPlainText() == f"gold {POSITIVE}, predicted negative: {counts[1][0]}"
    screenshot(ev, "evaluate_classify")

    with qtbot.waitSignal(ev.cell_selected, timeout=2000) as blocker:
        click_cell(qtbot, cm, 1, 0)
    assert blocker.args == [POSITIVE, "negative"]


def test_pages_without_results(page, tmp_path):
    empty = AppState(tmp_path / "h.json", tmp_path / "runs")
    ev, ins, ex = (page(cls, empty) for cls in (EvaluatePage, InspectPage, ExportPage))
    assert "No run yet" in ev.message.text() and ev.confusion_box.isHidden()
    assert "No run yet" in ins.message.text() and not ins.try_box.isEnabled()
    assert not ex.copy_button.isEnabled() and not ex.report_button.isEnabled()
    (tmp_path / "out").mkdir()
    run = make_run("cancelled-run", "classify", "x.csv", tmp_path / "out", "bundled", None,
                   status="cancelled")
    for p in (ev, ins, ex):
        p.show_run(run)
    assert "cancelled" in ev.message.text() and not ev.message.isHidden()
    assert ev.summary.isHidden() and ev.metrics_box.isHidden() and ev.confusion_box.isHidden()
    assert "cancelled" in ins.message.text() and ins.model.rowCount() == 0
    assert not ex.predictions_button.isEnabled() and ex.report_button.isEnabled()
    assert "cancelled" in export_report_html(run, tmp_path / "r.html").read_text()
    screenshot(ev, "evaluate_cancelled")


def test_evaluate_and_inspect_ner(qtbot, page, state, ner_run):
    ev = page(EvaluatePage, state, ner_run)
    metrics = metrics_json(ner_run)
    assert f"F1 {metrics['f1']:.4f}" in ev.summary.text()
    t = ev.metrics_table
    assert [t.item(i, 0).text() for i in range(t.rowCount())] == list(metrics["per_type"])
    assert ev.confusion_box.isHidden()
    screenshot(ev, "evaluate_ner")

    ins = page(InspectPage, state, ner_run)
    frame = predictions(ner_run)
    assert ins.model.rowCount() == len(frame)
    ins.set_filter(gold="PER")
    assert len(ins.view) == sum("B-PER" in g.split() for g in frame["gold"]) > 0
    ins.select_row(0)
    row = ins.view.iloc[0]
    first_per = row["words"].split(" ")[row["gold"].split(" ").index("B-PER")]
    html = ins.browser.toHtml()
    assert first_per in ins.browser.toPlainText() and "background-color" in html
    assert not ins.tabs.isTabVisible(1) and not ins.tabs.isTabVisible(2)  # classification only
    assert ins.why_button.isHidden() and ins.tabs.tabBar().isHidden()
    screenshot(ins, "inspect_ner")

    ins.try_text.setText("Olga Garcia works for Globex in San Francisco .")
    ins.try_predict()
    qtbot.waitUntil(lambda: ins.last_prediction is not None, timeout=60_000)
    tags = ins.last_prediction["tags"]
    assert len(tags) == 9 and set(tags) <= set(labels_of(ner_run))
    assert "Entities:" in ins.try_result.text()


def test_evaluate_and_inspect_qa(qtbot, page, state, qa_run):
    ev = page(EvaluatePage, state, qa_run)
    metrics = metrics_json(qa_run)
    assert f"exact match {metrics['exact_match']:.2f} %" in ev.summary.text()
    assert ev.confusion_box.isHidden() and ev.metrics_box.isHidden()  # SQuAD v1.1: no groups

    ins = page(InspectPage, state, qa_run)
    frame = predictions(qa_run)
    assert ins.model.rowCount() == len(frame) == metrics["total"]
    assert ins.gold_combo.isHidden() and not ins.try_pair.isHidden()  # the context box
    qtbot.waitUntil(lambda: isinstance(ins.contexts, dict), timeout=10_000)
    ins.sort_combo.setCurrentText("Highest F1 first")
    ins.select_row(0)
    row = ins.view.iloc[0]
    shown = ins.browser.toPlainText()
    assert row["question"] in shown and ins.contexts[row["id"]] in shown
    if row["prediction"]:
        assert "background-color" in ins.browser.toHtml()
    screenshot(ins, "inspect_qa")

    ins.try_text.setText("Where does Olga work?")
    ins.try_pair.setText("Olga Garcia works for Globex in San Francisco.")
    ins.try_predict()
    qtbot.waitUntil(lambda: ins.last_prediction is not None, timeout=60_000)
    answer = ins.last_prediction["prediction"]
    assert answer in "Olga Garcia works for Globex in San Francisco."
    assert "Answer:" in ins.try_result.text()


# === Inspect ===

def test_inspect_filters_match_the_predictions_file(qtbot, page, state, cls_run):
    ins = page(InspectPage, state, cls_run)
    frame = predictions(cls_run)
    assert ins.model.rowCount() == len(frame)
    assert ins.count_label.text() == f"{len(frame)} of {len(frame)} examples"

    ins.set_filter(correct=False)
    wrong = frame[frame["correct"] == "False"]
    assert sorted(ins.view["row"]) == sorted(wrong["row"])
    assert ins.model.rowCount() == len(wrong)
    assert ins.count_label.text() == f"{len(wrong)} of {len(frame)} examples"
    ins.correct_combo.setCurrentIndex(1)  # Correct, through the combo
    assert set(ins.view["correct"]) <= {"True"} and len(ins.view) == len(frame) - len(wrong)

    # a confusion-matrix cell, as the main window wires it: Evaluate -> Inspect
    ev = page(EvaluatePage, state, cls_run)
    ev.cell_selected.connect(lambda gold, pred: ins.set_filter(gold=gold, predicted=pred))
    click_cell(qtbot, ev.confusion_table, 1, 1)
    assert len(ins.view) == metrics_json(cls_run)["confusion_matrix"][1][1]
    assert set(ins.view["gold"]) <= {POSITIVE} and set(ins.view["prediction"]) <= {POSITIVE}

    ins.set_filter()
    ins.sort_combo.setCurrentText("Least confident first")
    confidence = ins.view["confidence"].astype(float).tolist()
    assert confidence == sorted(confidence)
    ins.sort_combo.setCurrentText("Row order")
    assert ins.view["row"].astype(int).tolist() == sorted(frame["row"].astype(int))


def test_inspect_shows_text_as_text(page, state, cls_run):
    ins = page(InspectPage, state, cls_run)
    ins.set_filter()
    texts = ins.view["text"].tolist()
    ins.select_row(texts.index(MARKUP_TEXT))
    shown = ins.browser.toPlainText()
    assert MARKUP_TEXT in shown and POSITIVE in shown  # literally, markup and all
    # the table's tooltips: Qt takes a tooltip that looks like HTML as rich text
    row = texts.index(MARKUP_TEXT)
    tips = [ins.model.data(ins.model.index(row, j), Qt.ToolTipRole)
            for j in range(ins.model.columnCount())]
    document = QTextDocument()
    rendered = []
    for tip in tips:
        document.setHtml(tip)
        rendered.append(document.toPlainText())
    assert MARKUP_TEXT in rendered and POSITIVE in rendered, rendered
    assert "Probabilities" in shown and "negative" in shown
    ins.select_row(texts.index(CHINESE_TEXT))
    assert CHINESE_TEXT in ins.browser.toPlainText()
    screenshot(ins, "inspect_classify")


def test_try_it_predicts_off_the_gui_thread(qtbot, page, state, cls_run):
    ins = page(InspectPage, state, cls_run)
    ins.try_text.setText("An utterly brilliant film; I would watch it again.")
    qtbot.mouseClick(ins.try_button, Qt.LeftButton)
    assert not ins.try_button.isEnabled()  # the click returned while the model works
    qtbot.waitUntil(lambda: ins.last_prediction is not None, timeout=60_000)
    assert ins.last_prediction["prediction"] in labels_of(cls_run)
    assert ins.try_button.isEnabled() and len(ins.model_cache) == 1
    assert "Prediction:" in ins.try_result.text()
    first = ins.last_prediction

    ins.last_prediction = None  # a second text reuses the loaded model
    ins.try_text.setText(CHINESE_TEXT)
    ins.try_predict()
    qtbot.waitUntil(lambda: ins.last_prediction is not None, timeout=60_000)
    assert ins.last_prediction["prediction"] in labels_of(cls_run) and first is not None
    screenshot(ins, "inspect_try_it")

    qtbot.mouseClick(ins.why_button, Qt.LeftButton)  # the typed text's attributions
    assert ins.tabs.currentIndex() == 1
    wait_explained(qtbot, ins)
    assert ins.explanation["subject"]["title"] == "Typed text"
    assert "Typed text" in ins.attribution_browser.toPlainText()
    assert CHINESE_TEXT in ins.attribution_browser.toPlainText()
    assert ins.attribution_markup.count('<span title="') == len(CHINESE_TEXT)  # a token a character


def test_a_run_still_training_is_not_tried_or_exported(page, state, cls_run):
    # its model/ holds the best epoch so far, rewritten until it ends
    running = dict(cls_run, status="running")
    ins, ex = page(InspectPage, state), page(ExportPage, state)
    ins.show_run(running)
    ex.show_run(running)
    assert not ins.try_box.isEnabled() and ins.model_folder is None
    assert not ex.copy_button.isEnabled() and not ex.transformers_button.isEnabled()
    ins.model_cache["stale"] = object()  # a model loaded before the run ended
    ins.show_run(cls_run)  # the same run, finished
    ex.show_run(cls_run)
    assert ins.try_box.isEnabled() and ins.model_cache == {}
    assert ex.copy_button.isEnabled() and ex.transformers_button.isEnabled()
    # a failed job for a run no longer shown says nothing about the shown one
    ins.try_result.setText("")
    for kind in ("contexts", "predict"):
        ins._job_failed((kind, "/another/run", None), "that run's model is gone")
    assert "gone" not in ins.message.text() and "gone" not in ins.try_result.text()
    ins._job_failed(("predict", cls_run["output"], None), "this model is gone")
    assert "this model is gone" in ins.try_result.text()


# === Attributions and attention ===

def wait_explained(qtbot, ins):
    qtbot.waitUntil(lambda: not ins.busy() and ins.explanation is not None, timeout=60_000)


def shown_sums(ins):
    """(sum of attributions, logit change) as the attribution view shows them."""
    m = re.search(r"sum of attributions = (-?[\d.]+); logit change from baseline = (-?[\d.]+)",
                  ins.attribution_browser.toPlainText())
    assert m, ins.attribution_browser.toPlainText()
    return float(m[1]), float(m[2])


def test_attributions_of_the_selected_example(qtbot, page, state, cls_run):
    ins = page(InspectPage, state, cls_run)
    labels = labels_of(cls_run)
    assert [ins.target_combo.itemText(i) for i in range(ins.target_combo.count())] == \
        ["predicted"] + labels
    ins.select_row(0)
    assert not ins.busy() and ins.explanation is None  # nothing computed until looked at
    ins.tabs.setCurrentIndex(1)
    wait_explained(qtbot, ins)
    r, row = ins.explanation, ins.view.iloc[0]
    assert r["subject"]["text"] == row["text"] and r["method"] == "integrated_gradients"
    assert labels[r["target"]] == row["prediction"]  # "predicted": the model's top class
    shown = ins.attribution_browser.toPlainText()
    assert row["text"] in shown  # the original characters, spaces and punctuation
    assert f"towards {row['prediction']}" in shown
    # one coloured span per word piece; [CLS] and [SEP] are not in the text
    spans = ins.attribution_markup.count('<span title="')
    assert spans == sum(int(e) > int(s) for s, e in r["offsets"]) == len(r["tokens"]) - 2
    total, change = shown_sums(ins)
    assert total == pytest.approx(float(r["attributions"].sum()), abs=1e-3)
    assert total == pytest.approx(change, rel=0.1, abs=0.02)  # completeness, 32 steps
    cursor = QTextCursor(ins.attribution_browser.document())  # hover: the piece and its value
    cursor.setPosition(shown.index(row["text"]) + int(r["offsets"][1][0]) + 1)
    assert cursor.charFormat().toolTip() == f"{r['tokens'][1]}: {r['attributions'][1]:+.4f}"

    # why not the other class?
    other = 1 - r["target"]
    ins.target_combo.setCurrentIndex(other + 1)
    qtbot.waitUntil(lambda: not ins.busy() and ins.explanation["target"] == other,
                    timeout=60_000)
    assert f"towards {labels[other]}" in ins.attribution_browser.toPlainText()
    total, change = shown_sums(ins)
    assert total == pytest.approx(change, rel=0.1, abs=0.02)

    ins.method_combo.setCurrentIndex(ins.method_combo.findData("gradient_x_input"))
    qtbot.waitUntil(lambda: not ins.busy() and ins.explanation["method"] == "gradient_x_input",
                    timeout=60_000)
    shown = ins.attribution_browser.toPlainText()
    assert "Gradient x input towards" in shown and "sum of attributions" in shown
    assert "logit change from baseline" not in shown  # no completeness to claim
    assert ins.explanation["target"] == other
    assert ins.attribution_markup.count('<span title="') == spans
    screenshot(ins, "inspect_attribution")
    screenshot(ins, "inspect_attribution_1280", size=(1280, 800))


def test_attribution_view_shows_text_as_text_and_drops_stale_results(qtbot, page, state,
                                                                      cls_run):
    ins = page(InspectPage, state, cls_run)
    ins.tabs.setCurrentIndex(1)
    shown = []
    show = ins._show_explanation
    ins._show_explanation = lambda r: (shown.append(r["subject"]["text"]), show(r))
    texts = ins.view["text"].tolist()
    ins.select_row(0)
    ins.select_row(texts.index(MARKUP_TEXT))  # before the first is done: it is dropped
    wait_explained(qtbot, ins)
    assert shown == [MARKUP_TEXT]
    assert MARKUP_TEXT in ins.attribution_browser.toPlainText()  # literally, "<b>" and all
    markup = ins.attribution_markup  # each piece escaped in its own span: "<", "b", ">"
    assert "<b>bold" not in markup and markup.count('">&amp;</span>') == 1
    assert markup.count('">&lt;</span>') == 2 and markup.count('">&gt;</span>') == 2
    assert POSITIVE in ins.attribution_browser.toPlainText()  # the label, as text
    tokens = ins.explanation["tokens"]
    assert ins.attribution_markup.count('<span title="') == len(tokens) - 2


def test_attention_view(qtbot, page, state, cls_run):
    ins = page(InspectPage, state, cls_run)
    ins.tabs.setCurrentIndex(2)
    ins.select_row(3)
    wait_explained(qtbot, ins)
    view, r = ins.attention, ins.explanation
    n = len(r["tokens"])
    assert r["attentions"].shape == (2, 2, n, n)
    assert view.image.image.shape == (n, n)
    assert view.bottom_axis.tokens == view.left_axis.tokens == list(r["tokens"])
    np.testing.assert_allclose(view.image.image, r["attentions"][0].mean(0), atol=1e-6)
    np.testing.assert_allclose(view.image.image.sum(1), 1.0, atol=1e-4)  # rows add up to 1
    before = view.image.image.copy()
    view.layer_spin.setValue(2)
    assert not np.allclose(view.image.image, before)
    np.testing.assert_allclose(view.image.image, r["attentions"][1].mean(0), atol=1e-6)
    before = view.image.image.copy()
    view.head_combo.setCurrentIndex(2)  # head 2 of layer 2
    assert not np.allclose(view.image.image, before)
    np.testing.assert_allclose(view.image.image, r["attentions"][1, 1], atol=1e-6)

    ins.select_row(4)  # a new example keeps the layer and head
    wait_explained(qtbot, ins)
    assert ins.explanation["subject"]["title"] == f"Row {ins.view.iloc[4]['row']}"
    assert (view.layer_spin.value(), view.head_combo.currentIndex()) == (2, 2)
    np.testing.assert_allclose(view.image.image, ins.explanation["attentions"][1, 1], atol=1e-6)
    screenshot(ins, "inspect_attention")
    screenshot(ins, "inspect_attention_1280", size=(1280, 800))


# === Export ===

def test_report_html(cls_run, tmp_path):
    path = export_report_html(cls_run, tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    metrics = metrics_json(cls_run)
    assert f"{metrics['accuracy']:.4f}" in text and "Confusion matrix" in text
    assert "positive &lt;3" in text and "positive <3" not in text
    assert "train &lt;sample&gt; &amp; co.csv" in text and "<sample>" not in text
    assert "<svg" in text  # the per-epoch curve
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left
    pdf = export_report_pdf(cls_run, tmp_path / "report.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_predictions_round_trip(cls_run, tmp_path):
    frame = predictions(cls_run)
    export_predictions(cls_run, tmp_path / "p.csv")
    back = pd.read_csv(tmp_path / "p.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(back, frame)
    export_predictions(cls_run, tmp_path / "p.jsonl")
    lines = pd.read_json(tmp_path / "p.jsonl", lines=True, dtype=False)
    assert list(lines.columns) == list(frame.columns) and len(lines) == len(frame)
    assert lines["text"].tolist() == frame["text"].tolist()
    assert lines["correct"].tolist() == (frame["correct"] == "True").tolist()
    assert lines["confidence"].tolist() == pytest.approx(frame["confidence"].astype(float))
    with pytest.raises(ExportError, match="must end in"):
        export_predictions(cls_run, tmp_path / "p.txt")


def test_export_for_transformers(page, state, cls_run, tmp_path, monkeypatch, qtbot):
    from transformers import AutoModelForSequenceClassification

    folder = export_transformers(cls_run, tmp_path / "hf")
    theirs = AutoModelForSequenceClassification.from_pretrained(str(folder))
    meta = json.loads((Path(cls_run["output"]) / "model" / "bertdesk.json").read_text())
    assert [theirs.config.id2label[i] for i in range(2)] == meta["head"]["labels"]
    with pytest.raises(ExportError, match="not empty"):
        export_transformers(cls_run, folder)

    ex = page(ExportPage, state)
    assert ex.transformers_button.isEnabled()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(tmp_path / "hf2")))
    ex.choose_transformers_target()  # off the GUI thread
    qtbot.waitUntil(lambda: ex.status.text().startswith("Saved"), timeout=60000)
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"]
    assert ex.transformers_button.isEnabled()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(tmp_path / "hf2")))
    ex.choose_transformers_target()  # now not empty: refused, in red
    qtbot.waitUntil(lambda: "not empty" in ex.status.text(), timeout=60000)
    # another run shown while an export runs: its end leaves that run's page alone
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(tmp_path / "hf3")))
    ex.choose_transformers_target()
    other = dict(cls_run, id="no-model", output=str(tmp_path / "nothing"))
    ex.show_run(other)
    assert wait_idle(60000) and (tmp_path / "hf3" / "config.json").is_file()
    QApplication.processEvents()
    assert not ex.transformers_button.isEnabled() and not ex.status.text()


def test_copy_model(page, state, cls_run, tmp_path, monkeypatch):
    target = copy_model(cls_run, tmp_path / "copy")
    source = Path(cls_run["output"]) / "model"
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in source.iterdir())
    assert (target / "model.safetensors").read_bytes() == \
        (source / "model.safetensors").read_bytes()
    with pytest.raises(ExportError, match="not empty"):
        copy_model(cls_run, target)

    ex = page(ExportPage, state)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(tmp_path / "full")))
    assert ex.choose_copy_target() is None
    assert "not empty" in ex.status.text()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(tmp_path / "preds"), "JSON lines "
                                                      "(*.jsonl)")))
    assert ex.choose_predictions_file() == tmp_path / "preds.jsonl"
    assert "Saved" in ex.status.text()
    screenshot(ex, "export")
    # "preds" typed again: the dialog asked about "preds", which does not exist;
    # the file the suffix makes does, so the page asks before replacing it
    (tmp_path / "preds.jsonl").write_text("mine")
    answers = []

    def answer(reply):
        def ask(*args, **kwargs):
            answers.append(args[2])
            return reply
        return staticmethod(ask)

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.No))
    assert ex.choose_predictions_file() is None
    assert (tmp_path / "preds.jsonl").read_text() == "mine"
    assert answers == [f"<p>{tmp_path / 'preds.jsonl'} already exists. Replace it?</p>"]
    assert "Not saved" in ex.status.text()
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(tmp_path / "report"), "HTML (*.html)")))
    (tmp_path / "report.html").write_text("mine")
    assert ex.choose_report_file() is None
    assert (tmp_path / "report.html").read_text() == "mine"
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.Yes))
    assert ex.choose_report_file() == tmp_path / "report.html"
    assert "<html" in (tmp_path / "report.html").read_text().lower()
    assert len(answers) == 3
    # never over the run's data (the dialog's own replace prompt was all there was)
    data = Path(cls_run["data"])
    before = data.read_bytes()
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(data), "CSV (*.csv)")))
    assert ex.choose_predictions_file() is None
    assert f"Not saved: {data} is the data file" in ex.status.text()
    assert data.read_bytes() == before


def test_a_run_that_dropped_bad_rows_shows_the_files_row_numbers(tmp_path):
    """With bad rows dropped the run reads a cleaned copy and numbers its
    rows: Inspect, its headings and the exports showed every row after a
    dropped one under the number of the row above it."""
    import random

    from bertdesk_gui.inspect_views import file_row, read_predictions

    out = tmp_path / "output"
    out.mkdir()
    (out / "validation_predictions.csv").write_text(
        "row,text,gold,prediction\n1,a,x,x\n2,d,y,x\n3,e,x,x\n", encoding="utf-8")
    run = {"output": str(out), "dropped_row_numbers": [2, 3]}  # rows b and c of the file
    assert list(read_predictions(run)["row"]) == ["1", "4", "5"]
    assert list(read_predictions({"output": str(out)})["row"]) == ["1", "2", "3"]
    rng = random.Random(0)
    for _ in range(50):
        dropped = sorted(rng.sample(range(1, 40), rng.randint(0, 10)))
        kept = [r for r in range(1, 40) if r not in dropped]
        assert [file_row(i, dropped) for i in range(1, len(kept) + 1)] == kept
