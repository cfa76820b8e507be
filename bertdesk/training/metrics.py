"""Evaluation metrics in plain numpy (fractions, not percent)."""

import numpy as np


def confusion_matrix(gold, pred, num_classes):
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(gold, int), np.asarray(pred, int)), 1)
    return m  # rows gold, columns predicted


def per_class_report(gold, pred, labels):
    """Precision, recall, F1 and support per label."""
    m = confusion_matrix(gold, pred, len(labels))
    tp = np.diag(m).astype(float)
    pred_n, gold_n = m.sum(0), m.sum(1)
    precision = np.divide(tp, pred_n, out=np.zeros_like(tp), where=pred_n > 0)
    recall = np.divide(tp, gold_n, out=np.zeros_like(tp), where=gold_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return [{"label": str(label), "precision": float(p), "recall": float(r), "f1": float(f),
             "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, gold_n)]


def classification_metrics(gold, pred, labels):
    """accuracy, macro_f1 (over labels that occur in gold or predictions, as
    scikit-learn averages), Matthews' correlation `mcc` (scikit-learn's
    multi-class form; GLUE's CoLA metric), per-class report and confusion
    matrix; with two labels also `f1`, the second label's (the positive
    class of a 0/1 task: GLUE's MRPC and QQP F1, scikit-learn's binary
    F1)."""
    gold, pred = np.asarray(gold, int), np.asarray(pred, int)
    report = per_class_report(gold, pred, labels)
    present = sorted(set(gold.tolist()) | set(pred.tolist()))
    macro = float(np.mean([report[i]["f1"] for i in present])) if present else 0.0
    matrix = confusion_matrix(gold, pred, len(labels))
    out = {"accuracy": float((gold == pred).mean()) if len(gold) else 0.0,
           "macro_f1": macro, "mcc": matthews(matrix)}
    if len(labels) == 2:
        out["f1"] = report[1]["f1"]
    return {**out, "per_class": report, "confusion_matrix": matrix.tolist()}


def matthews(matrix):
    """Matthews' correlation coefficient of a confusion matrix (rows gold),
    in scikit-learn's multi-class form; 0.0 where it is undefined (one
    class predicted or present only), as scikit-learn has it."""
    m = np.asarray(matrix, float)
    n, correct = m.sum(), np.trace(m)
    gold_n, pred_n = m.sum(1), m.sum(0)
    cov_gp = correct * n - gold_n @ pred_n
    cov_pp = n * n - pred_n @ pred_n
    cov_gg = n * n - gold_n @ gold_n
    if cov_pp * cov_gg == 0:
        return 0.0
    return float(cov_gp / np.sqrt(cov_gg * cov_pp))


def multilabel_metrics(gold, pred, labels):
    """gold, pred: (n, classes) 0/1. accuracy = exact set match;
    micro and macro F1 over classes."""
    gold, pred = np.asarray(gold, bool), np.asarray(pred, bool)
    tp = (gold & pred).sum(0).astype(float)
    fp = (~gold & pred).sum(0).astype(float)
    fn = (gold & ~pred).sum(0).astype(float)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    micro_denom = 2 * tp.sum() + fp.sum() + fn.sum()
    return {"accuracy": float((gold == pred).all(1).mean()),
            "macro_f1": float(f1.mean()),
            "micro_f1": float(2 * tp.sum() / micro_denom) if micro_denom else 0.0,
            "per_class": [{"label": str(l), "f1": float(f), "support": int(s)}
                          for l, f, s in zip(labels, f1, gold.sum(0))]}


def _rank(x):
    """Average ranks (ties share their mean rank), as scipy.stats.rankdata."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(a, b):
    """Pearson's r, NaN where it is undefined, as scipy.stats.pearsonr has
    it: a value that is not finite (a diverged model's NaN or inf), a
    constant series, fewer than two values. (It was 0.0 there: a model
    predicting one value, or nothing but NaN, read as uncorrelated.)"""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    # scaled first: the sums of squares of large values overflow
    a, b = a / (np.abs(a).max() or 1.0), b / (np.abs(b).max() or 1.0)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if not denom > 0:
        return float("nan")
    return float(np.clip((a * b).sum() / denom, -1.0, 1.0))


def spearman(a, b):
    """Spearman's rho: Pearson's r of the average ranks; NaN where a value
    is NaN (scipy's `nan_policy="propagate"`; infinities have their ranks)
    or a series is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    return pearson(_rank(a), _rank(b))


def regression_metrics(gold, pred):
    gold, pred = np.asarray(gold, float), np.asarray(pred, float)
    with np.errstate(over="ignore"):  # a diverged model's: inf
        mse = float(((gold - pred) ** 2).mean())
    return {"pearson": pearson(gold, pred), "spearman": spearman(gold, pred), "mse": mse}
