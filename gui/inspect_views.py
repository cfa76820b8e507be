"""Plain functions behind the Inspect page (no widgets): reading, filtering
and sorting a run's validation predictions, predicting and explaining one
typed example, and the HTML of the detail views.

Every dataset string reaches the HTML through `esc` (`html.escape`): the
data is text, never markup."""

import html
from pathlib import Path

import numpy as np
import pandas as pd

from bertdesk_gui.pages.evaluate_page import model_meta

TYPE_COLOURS = ["#ffd54f", "#81d4fa", "#a5d6a7", "#f48fb1", "#ce93d8", "#ffab91", "#b0bec5",
                "#e6ee9c"]
METHODS = {"integrated_gradients": "Integrated gradients",
           "gradient_x_input": "Gradient x input"}
POSITIVE_RGB, NEGATIVE_RGB = (214, 39, 40), (31, 119, 180)

# === Reading, filtering, sorting, predicting, explaining ===


def read_predictions(run):
    """`<output>/validation_predictions.csv` as strings, or None."""
    if not run or not run.get("output"):
        return None
    path = Path(run["output"]) / "validation_predictions.csv"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:  # a run with no validation examples
        return pd.DataFrame()
    except (OSError, ValueError):
        return None
    dropped = run.get("dropped_row_numbers")
    if dropped and "row" in frame:  # rows of the cleaned copy the run read, as the user's
        frame["row"] = [str(file_row(int(r), dropped)) if r.isdigit() else r
                        for r in frame["row"]]
    return frame


def file_row(row, dropped):
    """The row number in the user's file of row `row` of its copy without
    the rows `dropped` (the file's row numbers, ascending)."""
    for number in dropped:
        if number > row:
            break
        row += 1
    return row


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
    if task == "qa":  # SQuAD 2.0: an empty answer is the answer "none", not a blank
        for c in ("prediction", "gold"):
            if c in out:
                out[c] = out[c].map(lambda v: "(no answer)" if pd.isna(v) or v == "" else v)
    return out.reset_index(drop=True)


def predict_text(model, text, pair=None):
    """Run a loaded `FineTunedModel` on one typed example. Returns a dict:
    classify: the prediction row (prediction, confidence, p(label)...);
    ner: words, tags and entities; qa: the answer (`pair` is the context)."""
    from bertdesk.training.tasks import get_task

    task = get_task(model.task)
    if model.task == "ner":
        from bertdesk.data.ner import entities, is_bio, to_bio
        from bertdesk.predictor import Predictor

        bmes = model.meta.get("training_args", {}).get("format") == "bmes"
        words = Predictor(model).tag(text)  # split as the library splits raw text
        tags = [w["tag"] for w in words]
        if not is_bio(model.head["labels"]):  # BIOES or IO from a checkpoint made elsewhere
            tags = to_bio(tags)
        return {"words": [w["word"] for w in words], "tags": tags,
                "separator": "" if bmes else " ",
                "entities": [(kind, text[words[s]["start"]:words[e - 1]["end"]])
                             for kind, s, e in entities(tags)]}
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


def explain_text(model, text, pair=None, target=None, method="integrated_gradients",
                 steps=32):
    """`bertdesk.explain.explain` on a loaded text-classification
    `FineTunedModel`, at the length it was trained with; the result also
    names its `method`."""
    from bertdesk.explain import explain

    result = explain(model.model, model.tokenizer, text, pair, target=target, method=method,
                     steps=steps, max_length=model.max_length)
    return {**result, "method": method}


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
        start = str(row.get("start", ""))  # where the model found it (runs since 2026-12-07)
        if pred and start.isdigit() and context[int(start):int(start) + len(pred)] == pred:
            at = int(start)
        else:
            at = context.find(pred) if pred else -1
        body = (esc(context) if at < 0 else
                esc(context[:at]) + '<span style="background-color:#ffd54f"><b>'
                + esc(pred) + "</b></span>" + esc(context[at + len(pred):]))
        out.append(f"<p><b>Context</b></p><p>{body}</p>")
    return "".join(out)


# === Attributions and attention maps ===

def attribution_colour(share):
    """The background of a token whose attribution is `share` of the largest
    |attribution| (-1..1): white at 0, red for (+), blue for (-); never so
    dark that black text becomes hard to read."""
    t = min(1.0, abs(float(share))) * 0.8
    base = POSITIVE_RGB if share > 0 else NEGATIVE_RGB
    r, g, b = (round(255 + (c - 255) * t) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


def token_spans(result, segment):
    """[(start, end, attribution, word piece)] of one segment's tokens (0 the
    text, 1 the pair), specials left out: their offsets are (0, 0)."""
    return [(int(s), int(e), float(a), token)
            for token, (s, e), seg, a in zip(result["tokens"], result["offsets"],
                                              result["segments"], result["attributions"])
            if int(seg) == segment and e > s]


def attribution_scale(result):
    """The largest |attribution| of a non-special token (colours are shares of it)."""
    values = [abs(a) for seg in (0, 1) for _, _, a, _ in token_spans(result, seg)]
    return max(values, default=0.0) or 1.0


def coloured_text(source, spans, scale):
    """`source` with each token's character span on its attribution colour;
    the characters between tokens (spaces, text cut by truncation) as they
    are, so the pieces of one word read as the word."""
    parts, at = [], 0
    for s, e, a, token in spans:
        if s < at:
            continue  # word pieces never overlap; guard the HTML anyway
        parts.append(esc(source[at:s]))
        parts.append(f'<span title="{esc(token)}: {a:+.4f}" style="background-color:'
                     f'{attribution_colour(a / scale)}">{esc(source[s:e])}</span>')
        at = e
    parts.append(esc(source[at:]))
    return "".join(parts)


def class_name(target, labels, classes):
    if labels and 0 <= target < len(labels):
        return str(labels[target])
    return "score" if classes == 1 else f"class {target}"


def top_tokens(result, k=8):
    """The `k` non-special tokens with the largest |attribution|: [(piece, value)]."""
    spans = token_spans(result, 0) + token_spans(result, 1)
    return [(token, a) for _, _, a, token in sorted(spans, key=lambda t: -abs(t[2]))[:k]]


def sanity_line(result):
    """Integrated gradients add up to the logit change from the all-zero
    baseline (completeness); gradient x input only estimates it."""
    attributions = np.asarray(result["attributions"], float)
    total = float(attributions.sum())
    special = float(sum(a for a, (s, e) in zip(attributions, result["offsets"]) if e <= s))
    if result.get("method") == "gradient_x_input":
        return (f"sum of attributions = {total:.4f} (gradient x input is a first-order "
                f"estimate; it need not add up to the logit change)")
    change = float(result["logits"][result["target"]]) - float(result["baseline_logit"])
    steps = result.get("steps")
    return (f"sum of attributions = {total:.4f}; logit change from baseline = {change:.4f} "
            f"([CLS] and [SEP] carry {special:+.4f}"
            + (f"; {steps} integration steps)" if steps else ")"))


def attribution_html(result, text, pair=None, labels=None, title=""):
    """The text (and the pair, on its own line) with each token coloured by its
    attribution, a legend, the completeness line and the top tokens."""
    logits = np.asarray(result["logits"], float)
    target = int(result["target"])
    name = class_name(target, labels, len(logits))
    top = int(np.argmax(logits))
    why = "the model's top class" if target == top else \
        f"the model's top class is {esc(class_name(top, labels, len(logits)))}"
    scale = attribution_scale(result)
    out = [f"<h3>{esc(title)}</h3>" if title else "",
           f"<p>{esc(METHODS.get(result.get('method'), result.get('method', '')))} towards "
           f"<b>{esc(name)}</b> (logit {logits[target]:.3f}; {why})</p>",
           f'<p style="white-space:pre-wrap">{coloured_text(text, token_spans(result, 0), scale)}'
           f"</p>"]
    if pair is not None:
        out.append(f'<p style="white-space:pre-wrap"><i>second text:</i> '
                   f"{coloured_text(pair, token_spans(result, 1), scale)}</p>")
    out.append(f'<p><span style="background-color:{attribution_colour(1)}">&nbsp;for '
               f'{esc(name)}&nbsp;</span> &nbsp;<span style="background-color:'
               f'{attribution_colour(-1)}">&nbsp;against&nbsp;</span> &nbsp;'
               f"<small>(full colour: |attribution| {scale:.4f})</small></p>")
    out.append(f"<p><small>{esc(sanity_line(result))}</small></p>")
    rows = "".join(f"<tr><td bgcolor='{attribution_colour(a / scale)}'>{esc(token)}</td>"
                   f"<td align='right'>{a:+.4f}</td></tr>" for token, a in top_tokens(result))
    if rows:
        out.append(f"<p><b>Top tokens</b></p><table cellpadding='2'>{rows}</table>")
    return "".join(out)


def attention_map(attentions, layer, head=None):
    """One layer's `(seq, seq)` attention: one head's, or the heads' mean
    (`head` None); row = the token attending, column = the token attended to."""
    maps = np.asarray(attentions[layer], np.float32)  # (heads, seq, seq)
    return maps.mean(0) if head is None else maps[head]
