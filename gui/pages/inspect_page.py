"""Inspect: a run's validation predictions, one row per example, filtered and
sorted in pandas and shown through `FrameModel`; the selected example in
full (text, gold against prediction, class probabilities, entity spans or
the answer in its context); for text classification, why the model
predicts what it does (token attributions and attention maps, tabs beside
the example); and a "Try it" box that runs the run's model on a typed text.

Model work (predicting, explaining) runs on Qt's thread pool
(`bertdesk_gui.worker`), one job at a time on the loaded model; an
explanation asked for before the last one arrives is dropped. The plain
functions (reading, filtering, HTML) live in `bertdesk_gui.inspect_views`;
every dataset string reaches the HTML views through `html.escape`."""

import threading
from pathlib import Path

import pandas as pd
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QSplitter, QTableView, QTabWidget,
                               QTextBrowser, QToolTip, QVBoxLayout, QWidget)

from bertdesk_gui.attention_view import AttentionView
from bertdesk_gui.frame_model import FrameModel
from bertdesk_gui.inspect_views import (METHODS, TYPE_COLOURS, attribution_html, classify_html,
                                        display_frame, entity_html, entity_types, esc,
                                        explain_text, filter_frame, load_contexts, ner_html,
                                        predict_text, probability_html, qa_html,
                                        read_predictions, sort_frame, sort_options,
                                        type_colours, verdict)
from bertdesk_gui.pages.evaluate_page import model_meta, no_results_message
from bertdesk_gui.worker import run_async, wait_idle

__all__ = ["InspectPage", "TYPE_COLOURS", "classify_html", "display_frame", "entity_html",
           "entity_types", "esc", "filter_frame", "load_contexts", "ner_html", "predict_text",
           "probability_html", "qa_html", "read_predictions", "sort_frame", "sort_options",
           "type_colours", "verdict"]

ALL = "All"
PREDICTED = "predicted"
EXAMPLE_TAB, ATTRIBUTION_TAB, ATTENTION_TAB = range(3)


class _TipBrowser(QTextBrowser):
    """A QTextBrowser that shows the tooltip (`title`) of the text under the mouse."""

    def viewportEvent(self, event):
        if event.type() == QEvent.ToolTip:
            scroll = QPoint(self.horizontalScrollBar().value(), self.verticalScrollBar().value())
            at = self.document().documentLayout().hitTest(QPointF(event.pos() + scroll),
                                                             Qt.ExactHit)
            tip = ""
            if at >= 0:
                cursor = QTextCursor(self.document())
                # the format of the character before the cursor: the one under the mouse
                cursor.setPosition(min(at + 1, self.document().characterCount() - 1))
                tip = cursor.charFormat().toolTip()
            if tip:
                QToolTip.showText(event.globalPos(), tip, self)
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(event)


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
        self._typed = None  # the last typed example, as an explanation subject
        self._pending = set()  # tags of jobs in the pool: (kind, run output, ..., number)
        self._job_count = 0
        self._model_lock = threading.Lock()  # one job at a time loads or runs the model
        self.subject = None  # what to explain: {"key", "title", "text", "pair"}
        self.explanation = None  # the shown `explain_text` result, with "subject"
        self.attribution_markup = ""  # the HTML last given to the attribution view
        self._explain_key = None  # (subject key, method, target) shown or on its way
        self._explain_ticket = None  # the newest explain job; older results are dropped
        self.ig_steps = 32

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

        self.method_combo, self.target_combo = QComboBox(), QComboBox()
        for method, name in METHODS.items():
            self.method_combo.addItem(name, method)
        self.target_combo.setMinimumContentsLength(8)
        self.target_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.target_combo.setToolTip("The class the attributions explain: the predicted one, "
                                     "or another (why not that class?)")
        self.attribution_browser = _TipBrowser()
        self.attribution_browser.setOpenLinks(False)
        attribution = QWidget()
        controls = QHBoxLayout()
        for widget in (QLabel("Method:"), self.method_combo, QLabel("Target:"),
                       self.target_combo):
            controls.addWidget(widget)
        controls.addStretch(1)
        column = QVBoxLayout(attribution)
        column.setContentsMargins(4, 4, 4, 4)
        column.addLayout(controls)
        column.addWidget(self.attribution_browser, 1)
        self.attention = AttentionView()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.browser, "Example")
        self.tabs.addTab(attribution, "Attribution")
        self.tabs.addTab(self.attention, "Attention")
        self.tabs.currentChanged.connect(self._request_explain)
        self.method_combo.currentIndexChanged.connect(self._request_explain)
        self.target_combo.currentIndexChanged.connect(self._request_explain)

        splitter = QSplitter(Qt.Horizontal)
        splitter.addWidget(self.table)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([600, 400])  # the plot's size hint would take more
        self.splitter = splitter

        self.try_box = QGroupBox("Try it")
        self.try_text, self.try_pair = QLineEdit(), QLineEdit()
        self.try_button = QPushButton("Predict")
        self.why_button = QPushButton("Why?")
        self.why_button.setToolTip("Show the token attributions of the typed text")
        self.why_button.setEnabled(False)
        self.try_result = QLabel("Type a text and press Predict to run this run's model on it.")
        self.try_result.setWordWrap(True)
        self.try_result.setTextInteractionFlags(Qt.TextSelectableByMouse)
        row = QHBoxLayout()
        row.addWidget(self.try_text, 3)
        row.addWidget(self.try_pair, 3)
        row.addWidget(self.try_button)
        row.addWidget(self.why_button)
        box = QVBoxLayout(self.try_box)
        box.addLayout(row)
        box.addWidget(self.try_result)
        self.try_button.clicked.connect(self.try_predict)
        self.try_text.returnPressed.connect(self.try_predict)
        self.why_button.clicked.connect(self.explain_typed)

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
        if ((run or {}).get("output") != (self.run or {}).get("output")
                or (run or {}).get("status") != (self.run or {}).get("status")):
            # another run, or the same one ended: its model/ holds other weights now
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
        self._setup_explain(head)
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
        if self.subject and self.subject["key"][0] == "row":
            self._set_subject(None)  # the selection went with the old rows

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
            pair = row.get("text_pair", "") if self.wants_pair else None
            self._set_subject({"key": ("row", row.get("row"), row["text"], pair),
                               "title": f"Row {row.get('row', i + 1)}", "text": row["text"],
                               "pair": pair})

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
        for folder in [f for f in self.model_cache if f != self.model_folder]:
            del self.model_cache[folder]  # loaded for a run no longer shown
        if tag[0] == "explain":
            if tag[2] is self._explain_ticket and result is not None:
                self._show_explanation(result)
        elif tag[0] == "contexts" and tag[1] == (self.run or {}).get("output"):
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
            if self.task == "classify" and self._typed is not None:
                self.why_button.setEnabled(True)
                if self.tabs.currentIndex() != EXAMPLE_TAB:  # explained at once; else: Why?
                    self._set_subject(self._typed)

    def _job_failed(self, tag, message):
        if tag[0] == "explain":
            if tag[2] is self._explain_ticket:
                self._explain_key = None  # asking again tries again
                self._explain_message(f"The attributions could not be computed: {message}",
                                      error=True)
        elif tag[1] != (self.run or {}).get("output"):
            self.try_button.setEnabled(True)
            return  # a job for a run no longer shown: its failure is not this run's
        elif tag[0] == "contexts":
            self.contexts = False
            self.message.setText(f"The contexts could not be read: {message}")
            self.message.show()
        else:
            self.try_button.setEnabled(True)
            self.try_result.setText(f'<span style="color:#c0392b">{esc(message)}</span>')

    def _loaded_model(self, folder):
        """In the pool, holding `_model_lock`: the cached model of `folder`,
        loaded on first use."""
        model = self.model_cache.get(folder)
        if model is None:
            from bertdesk.lean_import import import_keras_lean

            import_keras_lean()  # the app's first Keras, without JAX and scikit-learn
            from bertdesk.tasks.saving import load_model

            model = self.model_cache[folder] = load_model(folder)
        return model

    def shutdown(self, msecs=30000):
        """Wait for work in flight (the main window's `wait_idle` does the same)."""
        return wait_idle(msecs)

    # --- Attributions and attention ---

    def _setup_explain(self, head):
        classify = self.task == "classify"
        self.subject, self.explanation, self._typed = None, None, None
        self._explain_key = self._explain_ticket = None  # results on their way are dropped
        if not classify:
            self.tabs.setCurrentIndex(EXAMPLE_TAB)
        for tab in (ATTRIBUTION_TAB, ATTENTION_TAB):
            self.tabs.setTabVisible(tab, classify)  # attributions are for text classification
        self.tabs.tabBar().setVisible(classify)  # no lone "Example" tab
        self.why_button.setVisible(classify)
        self.why_button.setEnabled(False)
        regression = head.get("problem_type") == "regression"
        self.explain_labels = [] if regression else [str(x) for x in head.get("labels") or []]
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        self.target_combo.addItem(PREDICTED, None)
        for i, label in enumerate(self.explain_labels):
            self.target_combo.addItem(label, i)
        self.target_combo.blockSignals(False)
        self.target_combo.setEnabled(bool(self.explain_labels))
        self._explain_message(None)

    def _explain_message(self, text, error=False):
        """`text` in the attribution and attention tabs in place of a result
        (None: how to get one)."""
        if text is None:
            text = ("Select an example in the table (or type one in Try it and press Why?) to "
                    "see which tokens its prediction rests on.")
        colour = "#c0392b" if error else "#555"
        self.attribution_markup = ""
        self.attribution_browser.setHtml(f'<p style="color:{colour}"><i>{esc(text)}</i></p>')
        self.attention.show_message(text)

    def _set_subject(self, subject):
        self.subject = subject
        self._request_explain()

    def _request_explain(self, *_):
        """Explain the subject with the chosen method and target, in the pool,
        if an explanation tab is open and it is not shown or on its way."""
        if self.task != "classify" or self.tabs.currentIndex() == EXAMPLE_TAB:
            return  # computed when looked at
        method, target = self.method_combo.currentData(), self.target_combo.currentData()
        key = None if self.subject is None else (self.subject["key"], method, target)
        if key is not None and key == self._explain_key:
            return
        self._explain_key, self._explain_ticket = key, None
        if self.subject is None:
            return self._explain_message(None)
        if self.model_folder is None:
            return self._explain_message("This run has no saved model to explain.")
        subject, folder, steps = self.subject, self.model_folder, self.ig_steps
        ticket = self._explain_ticket = object()

        def work():
            with self._model_lock:
                if ticket is not self._explain_ticket:
                    return None  # asked for something else meanwhile: skip
                model = self._loaded_model(folder)
                result = explain_text(model, subject["text"], subject["pair"], target, method,
                                      steps)
                return {**result, "subject": subject}

        self._explain_message(f"Computing the attributions of {subject['title'].lower()}…")
        self._start(("explain", self.run.get("output") if self.run else None, ticket), work)

    def _show_explanation(self, result):
        self.explanation = result
        subject = result["subject"]
        self.attribution_markup = attribution_html(result, subject["text"], subject["pair"],
                                                   self.explain_labels, subject["title"])
        self.attribution_browser.setHtml(self.attribution_markup)
        self.attention.set_attentions(result["attentions"], result["tokens"])

    # --- Try it ---

    def _setup_try(self, run, meta):
        folder = Path(run["output"]) / "model" if run and run.get("output") else None
        # a run still training rewrites model/ at every better epoch: tried once it ends
        ready = folder and run.get("status") != "running" and (folder / "bertdesk.json").is_file()
        self.model_folder = folder if ready else None
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
        self._typed = {"key": ("typed", text, pair), "title": "Typed text", "text": text,
                       "pair": pair}

        def work():
            with self._model_lock:
                model = self._loaded_model(folder)
                return folder, model, predict_text(model, text, pair)

        self.try_button.setEnabled(False)
        self.why_button.setEnabled(False)
        self.try_result.setText("Predicting…" if cached else "Loading the model and predicting…")
        self._start(("predict", self.run.get("output")), work)

    def explain_typed(self):
        """The attributions of the last typed text ("Why?")."""
        if self._typed is not None:
            self.subject = self._typed
            self.tabs.setCurrentIndex(ATTRIBUTION_TAB)  # asks for it unless already open
            self._request_explain()

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
