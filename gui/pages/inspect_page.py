"""Inspect: a run's validation predictions, one row per example, filtered and
sorted in pandas and shown through `FrameModel`; the selected example in
full (text, gold against prediction, class probabilities, entity spans or
the answer in its context); and a "Try it" box that runs the run's model on
a typed text on Qt's thread pool (`bertdesk_gui.worker`).

Every dataset string reaches the HTML views through `html.escape`: the
data is text, never markup."""

import html
from pathlib import Path

import pandas as pd
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QSplitter, QTableView, QTextBrowser,
                               QVBoxLayout, QWidget)

from bertdesk_gui.frame_model import FrameModel
from bertdesk_gui.pages.evaluate_page import model_meta, no_results_message
from bertdesk_gui.worker import run_async, wait_idle

TYPE_COLOURS = ["#ffd54f", "#81d4fa", "#a5d6a7", "#f48fb1", "#ce93d8", "#ffab91", "#b0bec5",
                "#e6ee9c"]
ALL = "All"

# === Plain functions: reading, filtering, sorting, predicting ===


def read_predictions(run):
    """`<output>/validation_predictions.csv` as strings, or None."""
    if not run or not run.get("output"):
        return None
    path = Path(run["output"]) / "validation_predictions.csv"
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:  # a run with no validation examples
        return pd.DataFrame()
    except (OSError, ValueError):
        return None


def entity_types(tags):
    return {t[2:] for t in tags.split() if t.startswith("B-")}


def filter_frame(frame, task, correct=None, gold=None, predicted=None, multi_label=False):
    keep = pd.Series(True, index=frame.index)
    if correct is not None and "correct" in frame:
        keep &= frame["correct"] == str(bool(correct))
    for value, column in ((gold, "gold"), (predicted, "prediction")):
        if value is None or column not in frame:
            continue
        if task == "ner":
            keep &= frame[column].map(lambda tags, v=value: v in entity_types(tags))
        elif multi_label:
            keep &= frame[column].map(lambda s, v=value: v in s.split(","))
        else:
            keep &= frame[column] == value
    return frame[keep]


def sort_options(frame):
    """[(name, column or None, ascending)] for the frame's columns."""
    options = [("Row order", None, True)]
    if "confidence" in frame:
        options += [("Least confident first", "confidence", True),
                    ("Most confident first", "confidence", False)]
    if "f1" in frame:
        options += [("Lowest F1 first", "f1", True), ("Highest F1 first", "f1", False)]
    return options


def sort_frame(frame, column, ascending):
    if column is None:
        column = next((c for c in ("row", "line") if c in frame), None)
        if column is None:
            return frame
    key = pd.to_numeric(frame[column], errors="coerce")
    return frame.loc[key.sort_values(ascending=ascending, kind="stable").index]


def display_frame(frame, task):
    """The table's columns (full texts and probabilities stay in the detail view)."""
    wanted = {"classify": ["row", "gold", "prediction", "confidence", "correct", "text",
                           "text_pair"],
              "ner": ["line", "correct", "words", "entities"],
              "qa": ["id", "correct", "f1", "question", "prediction", "gold"]}[task]
    out = frame[[c for c in wanted if c in frame]].copy()
    for c in ("confidence", "f1"):
        if c in out:
            out[c] = pd.to_numeric(out[c], errors="coerce").map(lambda v: f"{v:.3f}")
    return out.reset_index(drop=True)


def predict_text(model, text, pair=None):
    """Run a loaded `FineTunedModel` on one typed example. Returns a dict:
    classify: the prediction row (prediction, confidence, p(label)...);
    ner: words, tags and entities; qa: the answer (`pair` is the context)."""
    from bertdesk.training.tasks import get_task

    task = get_task(model.task)
    if model.task == "ner":
        from bertdesk.data.ner import TaggedSentences, entities

        bmes = model.meta.get("training_args", {}).get("format") == "bmes"
        words = [c for c in text if not c.isspace()] if bmes else text.split()
        data = TaggedSentences([words], [["O"] * len(words)], "typed text", [1])
        tags = task.scores(model.model, model.tokenizer, data, model.head, model.max_length)[0]
        return {"words": words, "tags": list(tags), "separator": "" if bmes else " ",
                "entities": [(kind, " ".join(words[s:e])) for kind, s, e in entities(tags)]}
    if model.task == "qa":
        from bertdesk.data.squad import QAData, QAExample

        data = QAData([QAExample("typed", text, pair or "", [])], "typed text",
                      model.head.get("version", "1.1"))
        answer = task.scores(model.model, model.tokenizer, data, model.head, model.max_length)
        return {"prediction": answer.get("typed", "")}
    from bertdesk.data.tables import ClassificationData

    data = ClassificationData([text], None if pair is None else [pair], None, "typed text", [1])
    scores = task.scores(model.model, model.tokenizer, data, model.head, model.max_length)
    return task.rows(scores, data, model.head)[0]


def load_contexts(run):
    """{question id: context} from the SQuAD file the run trained on."""
    from bertdesk.data.squad import read_squad

    args = model_meta(run).get("training_args", {})
    source = args.get("validation") or args.get("train") or run.get("data")
    return {ex.id: ex.context for ex in read_squad(source, require_answers=False).examples}


# === HTML for the detail view (everything from the data escaped) ===

def esc(value):
    return html.escape(str(value))


def type_colours(types):
    return {t: TYPE_COLOURS[i % len(TYPE_COLOURS)] for i, t in enumerate(sorted(types))}


def entity_html(words, tags, colours, separator=" "):
    from bertdesk.data.ner import entities

    starts = {s: (kind, e) for kind, s, e in entities(tags)}
    parts, i = [], 0
    while i < len(words):
        if i in starts:
            kind, e = starts[i]
            parts.append(f'<span style="background-color:{colours.get(kind, "#ddd")}">'
                         f'{esc(separator.join(words[i:e]))}'
                         f'<sub><b>&nbsp;{esc(kind)}</b></sub></span>')
            i = e
        else:
            parts.append(esc(words[i]))
            i += 1
    return separator.join(parts)


def verdict(correct):
    if correct not in ("True", "False"):
        return ""  # regression: no right or wrong
    return ('<span style="color:#1e7d32">✔ correct</span>' if correct == "True"
            else '<span style="color:#c0392b">✘ wrong</span>')


def classify_html(row, labels):
    out = [f"<h3>Row {esc(row.get('row', ''))}</h3>", f"<p>{esc(row['text'])}</p>"]
    if row.get("text_pair"):
        out.append(f"<p><i>second text:</i> {esc(row['text_pair'])}</p>")
    out.append(f"<p>gold <b>{esc(row.get('gold', ''))}</b> &nbsp; predicted "
               f"<b>{esc(row['prediction'])}</b> &nbsp; {verdict(row.get('correct'))}</p>")
    out.append(probability_html(row, labels))
    return "".join(out)


def probability_html(row, labels):
    probs = [(label, float(row[f"p({label})"])) for label in labels or []
             if row.get(f"p({label})", "") != ""]
    if not probs:
        return ""
    cells = "".join(
        f"<tr><td>{esc(label)}</td><td align='right'>{p:.3f}</td>"
        f"<td><table cellspacing='0' cellpadding='0'><tr><td bgcolor='#4a90d9' "
        f"width='{max(1, int(p * 200))}' height='10'></td></tr></table></td></tr>"
        for label, p in sorted(probs, key=lambda lp: -lp[1]))
    return f"<p><b>Probabilities</b></p><table cellpadding='3'>{cells}</table>"


def ner_html(row, colours, separator):
    words = row["words"].split(" ")
    legend = " ".join(f'<span style="background-color:{c}">&nbsp;{esc(t)}&nbsp;</span>'
                      for t, c in colours.items())
    return (f"<h3>Line {esc(row.get('line', ''))}</h3><p>{verdict(row.get('correct'))}</p>"
            f"<p><b>Gold</b><br>{entity_html(words, row['gold'].split(' '), colours, separator)}"
            f"</p><p><b>Predicted</b><br>"
            f"{entity_html(words, row['prediction'].split(' '), colours, separator)}</p>"
            f"<p>{legend}</p>")


def qa_html(row, context):
    pred = row["prediction"]
    golds = [g for g in row.get("gold", "").split(" | ")]
    answers = "".join(f"<li>{esc(g) if g else '<i>(no answer)</i>'}</li>" for g in golds)
    out = [f"<h3>{esc(row['question'])}</h3>",
           f"<p>predicted <b>{esc(pred) if pred else '<i>(no answer)</i>'}</b> &nbsp; "
           f"F1 {float(row.get('f1') or 0):.2f} &nbsp; {verdict(row.get('correct'))}</p>",
           f"<p><b>Gold answers</b></p><ul>{answers}</ul>"]
    if context is None:
        out.append("<p><i>Loading the context…</i></p>")
    elif isinstance(context, str):
        at = context.find(pred) if pred else -1
        body = (esc(context) if at < 0 else
                esc(context[:at]) + '<span style="background-color:#ffd54f"><b>'
                + esc(pred) + "</b></span>" + esc(context[at + len(pred):]))
        out.append(f"<p><b>Context</b></p><p>{body}</p>")
    return "".join(out)


# === The page ===

class InspectPage(QWidget):
    def __init__(self, state, parent=None):
        super().__init__(parent)
        self.state = state
        self.run = None
        self.task = "classify"
        self.frame = None  # every prediction, as read
        self.view = None  # the filtered, sorted rows behind the table
        self.labels = []
        self.contexts = None  # qa: {id: context}, loaded in the pool
        self.model_cache = {}  # {model folder: FineTunedModel}, the shown run's only
        self.last_prediction = None
        self._pending = set()  # tags of jobs in the pool: (kind, run output, number)
        self._job_count = 0

        self.title = QLabel("Inspect")
        self.title.setStyleSheet("font-size: 15pt; font-weight: 600;")
        self.message = QLabel()
        self.message.setTextFormat(Qt.PlainText)
        self.message.setWordWrap(True)

        self.correct_combo = QComboBox()
        self.correct_combo.addItems([ALL, "Correct", "Wrong"])
        self.gold_combo, self.predicted_combo, self.sort_combo = QComboBox(), QComboBox(), QComboBox()
        for combo in (self.gold_combo, self.predicted_combo):
            combo.setMinimumContentsLength(10)
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.count_label = QLabel()
        bar = QHBoxLayout()
        self.gold_caption, self.predicted_caption = QLabel("Gold:"), QLabel("Predicted:")
        for widget in (QLabel("Show:"), self.correct_combo, self.gold_caption, self.gold_combo,
                       self.predicted_caption, self.predicted_combo, QLabel("Sort by:"),
                       self.sort_combo):
            bar.addWidget(widget)
        bar.addStretch(1)
        bar.addWidget(self.count_label)
        for combo in (self.correct_combo, self.gold_combo, self.predicted_combo, self.sort_combo):
            combo.currentIndexChanged.connect(self._apply)

        self.model = FrameModel()
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setMaximumSectionSize(320)
        self.table.verticalHeader().setVisible(False)
        self.table.selectionModel().currentRowChanged.connect(lambda cur, _: self._show_row(cur.row()))
        self.browser = QTextBrowser()
        self.browser.setOpenLinks(False)
        splitter = QSplitter(Qt.Horizontal)
        splitter.addWidget(self.table)
        splitter.addWidget(self.browser)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        self.splitter = splitter

        self.try_box = QGroupBox("Try it")
        self.try_text, self.try_pair = QLineEdit(), QLineEdit()
        self.try_button = QPushButton("Predict")
        self.try_result = QLabel("Type a text and press Predict to run this run's model on it.")
        self.try_result.setWordWrap(True)
        self.try_result.setTextInteractionFlags(Qt.TextSelectableByMouse)
        row = QHBoxLayout()
        row.addWidget(self.try_text, 3)
        row.addWidget(self.try_pair, 3)
        row.addWidget(self.try_button)
        box = QVBoxLayout(self.try_box)
        box.addLayout(row)
        box.addWidget(self.try_result)
        self.try_button.clicked.connect(self.try_predict)
        self.try_text.returnPressed.connect(self.try_predict)

        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.message)
        layout.addLayout(bar)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.try_box)
        self.filter_widgets = [self.correct_combo, self.gold_combo, self.predicted_combo,
                               self.sort_combo, self.gold_caption, self.predicted_caption]
        state.run_changed.connect(self._run_changed)
        self.show_run(state.history.get(state.current_run) if state.current_run else None)

    # --- the run ---

    def _run_changed(self, run):
        if run and run.get("id") == self.state.current_run and run.get("status") != "running":
            self.show_run(run)

    def show_run(self, run):
        if (run or {}).get("output") != (self.run or {}).get("output"):
            self.model_cache.clear()
            self.last_prediction = None
        self.run, self.contexts = run, None
        meta = model_meta(run) if run else {}
        head = meta.get("head") or {}
        self.task = (run or {}).get("task") or meta.get("task") or "classify"
        self.multi_label = head.get("problem_type") == "multi_label"
        self.separator = "" if meta.get("training_args", {}).get("format") == "bmes" else " "
        self.frame = read_predictions(run)
        self.title.setText(f"Inspect: run {run['id']}" if run else "Inspect")
        self._setup_try(run, meta)
        if self.frame is None:
            self.message.setText(no_results_message(run))
            self.message.show()
            self.view = None
            self.model.set_frame(pd.DataFrame())
            self.browser.clear()
            self.count_label.clear()
            for w in self.filter_widgets:
                w.setEnabled(False)
            return
        self.message.hide()
        labels = [str(label) for label in head.get("labels") or []]
        if self.task == "ner":
            self.labels = sorted({label[2:] for label in labels if label != "O"})
            self.colours = type_colours(self.labels)
        else:
            self.labels = labels
        has_labels = self.task == "ner" or (self.task == "classify" and
                                            head.get("problem_type") != "regression")
        choices = self.labels or sorted(set(self.frame.get("gold", [])))
        for combo in (self.gold_combo, self.predicted_combo):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([ALL] + list(choices))
            combo.blockSignals(False)
        self.sort_combo.blockSignals(True)
        self.sort_combo.clear()
        self.sorts = sort_options(self.frame)
        self.sort_combo.addItems([name for name, _, _ in self.sorts])
        self.sort_combo.blockSignals(False)
        for w in self.filter_widgets:
            w.setEnabled(True)
        for w in (self.gold_combo, self.predicted_combo, self.gold_caption, self.predicted_caption):
            w.setVisible(has_labels)
        self.correct_combo.setVisible("correct" in self.frame)
        if self.task == "qa":
            self._start(("contexts", run.get("output")), lambda: load_contexts(run))
        self._apply()

    def set_filter(self, correct=None, gold=None, predicted=None):
        """Show only the (correct or wrong) examples of a gold and predicted
        label; None means any."""
        self.correct_combo.blockSignals(True)
        self.correct_combo.setCurrentIndex({None: 0, True: 1, False: 2}[correct])
        self.correct_combo.blockSignals(False)
        for combo, value in ((self.gold_combo, gold), (self.predicted_combo, predicted)):
            combo.blockSignals(True)
            if value is None:
                combo.setCurrentIndex(0)
            else:
                if combo.findText(value, Qt.MatchExactly) < 0:
                    combo.addItem(value)
                combo.setCurrentIndex(combo.findText(value, Qt.MatchExactly))
            combo.blockSignals(False)
        self._apply()

    def _apply(self, *_):
        if self.frame is None:
            return
        pick = lambda combo: None if combo.currentIndex() <= 0 else combo.currentText()  # noqa: E731
        correct = {0: None, 1: True, 2: False}[max(0, self.correct_combo.currentIndex())]
        view = filter_frame(self.frame, self.task, correct, pick(self.gold_combo),
                            pick(self.predicted_combo), self.multi_label)
        _, column, ascending = self.sorts[max(0, self.sort_combo.currentIndex())]
        self.view = sort_frame(view, column, ascending)
        self.model.set_frame(display_frame(self.view, self.task))
        self.table.resizeColumnsToContents()
        self.count_label.setText(f"{len(self.view)} of {len(self.frame)} examples")
        self.browser.setHtml("<p><i>Select an example to see it in full.</i></p>"
                             if len(self.view) else "<p><i>No example matches.</i></p>")

    def select_row(self, i):
        """Select the i-th shown example (as a click would)."""
        self.table.selectRow(i)
        self.table.setCurrentIndex(self.model.index(i, 0))

    def _show_row(self, i):
        if self.view is None or not 0 <= i < len(self.view):
            return
        row = self.view.iloc[i].to_dict()
        if self.task == "ner":
            self.browser.setHtml(ner_html(row, self.colours, self.separator))
        elif self.task == "qa":
            context = (self.contexts.get(row["id"], False) if isinstance(self.contexts, dict)
                       else self.contexts)
            self.browser.setHtml(qa_html(row, context))
        else:
            self.browser.setHtml(classify_html(row, self.labels))

    # --- work in the pool ---

    def _start(self, tag, fn):
        self._job_count += 1
        tag = (*tag, self._job_count)

        def work():  # in the pool; the tag comes back with the outcome
            try:
                return tag, True, fn()
            except Exception as e:  # shown in the page
                return tag, False, f"{type(e).__name__}: {e}"

        self._pending.add(tag)
        run_async(work, self._job_ended)

    def busy(self):
        """True while a job of this page is in the pool."""
        return bool(self._pending)

    def _job_ended(self, outcome):
        tag, ok, result = outcome
        self._pending.discard(tag)
        (self._job_done if ok else self._job_failed)(tag, result)

    def _job_done(self, tag, result):
        if tag[0] == "contexts" and tag[1] == (self.run or {}).get("output"):
            self.contexts = result
            self._show_row(self.table.currentIndex().row())
        elif tag[0] == "predict":
            self.try_button.setEnabled(True)
            folder, model, prediction = result
            if tag[1] != (self.run or {}).get("output"):
                return  # another run is shown now
            self.model_cache[folder] = model
            self.last_prediction = prediction
            self.try_result.setText(self._prediction_html(prediction))

    def _job_failed(self, tag, message):
        if tag[0] == "contexts":
            self.contexts = False if tag[1] == (self.run or {}).get("output") else self.contexts
            self.message.setText(f"The contexts could not be read: {message}")
            self.message.show()
        else:
            self.try_button.setEnabled(True)
            self.try_result.setText(f'<span style="color:#c0392b">{esc(message)}</span>')

    def shutdown(self, msecs=30000):
        """Wait for work in flight (the main window's `wait_idle` does the same)."""
        return wait_idle(msecs)

    # --- Try it ---

    def _setup_try(self, run, meta):
        folder = Path(run["output"]) / "model" if run and run.get("output") else None
        self.model_folder = folder if folder and (folder / "bertdesk.json").is_file() else None
        self.try_box.setEnabled(self.model_folder is not None)
        pair_column = meta.get("training_args", {}).get("text_pair_column")
        self.wants_pair = self.task == "qa" or bool(pair_column)
        self.try_pair.setVisible(self.wants_pair)
        self.try_text.setPlaceholderText({"ner": "a sentence to tag", "qa": "a question"}
                                         .get(self.task, "a text to classify"))
        self.try_pair.setPlaceholderText("the paragraph to answer from" if self.task == "qa"
                                         else f"second text ({pair_column})")

    def try_predict(self):
        text = self.try_text.text().strip()
        if self.model_folder is None or not self.try_button.isEnabled():
            return
        if not text:
            self.try_result.setText("Type a text first.")
            return
        pair = self.try_pair.text() if self.wants_pair else None
        if self.task == "qa" and not (pair or "").strip():
            self.try_result.setText("Type the paragraph to answer from as well.")
            return
        folder, cached = self.model_folder, self.model_cache.get(self.model_folder)

        def work():
            from bertdesk.tasks.saving import load_model

            model = cached or load_model(folder)
            return folder, model, predict_text(model, text, pair)

        self.try_button.setEnabled(False)
        self.try_result.setText("Predicting…" if cached else "Loading the model and predicting…")
        self._start(("predict", self.run.get("output")), work)

    def _prediction_html(self, p):
        if self.task == "ner":
            colours = type_colours(set(self.labels) | {k for k, _ in p["entities"]})
            found = entity_html(p["words"], p["tags"], colours, p["separator"])
            return f"<b>Entities:</b> {found if p['entities'] else esc(' '.join(p['words']))}" + (
                "" if p["entities"] else " <i>(none found)</i>")
        if self.task == "qa":
            return f"<b>Answer:</b> {esc(p['prediction']) or '<i>(no answer)</i>'}"
        out = f"<b>Prediction:</b> {esc(p['prediction'])}"
        if "confidence" in p:
            out += f" &nbsp; (confidence {p['confidence']:.3f})"
        probs = sorted(((k[2:-1], v) for k, v in p.items() if k.startswith("p(")),
                       key=lambda kv: -kv[1])
        if probs:
            out += "<br>" + ", ".join(f"{esc(k)} {v:.3f}" for k, v in probs)
        return out
