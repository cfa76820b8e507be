"""Fine-tuning end to end on a tiny model, on the current backend: train,
save, load, evaluate, predict; every problem type; resume; bad input."""

import csv
import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import keras
import numpy as np
import pytest

import bertdesk
from bertdesk.cli import main as cli_main
from bertdesk.data.tables import DataError
from bertdesk.tasks.saving import load_model
from bertdesk.training.finetune import FinetuneConfig, run_finetune
from bertdesk.training.tasks import TASKS

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def sample(tmp_path, name, n, source="sentiment_en.csv"):
    with open(ASSETS / source, encoding="utf-8") as f:
        rows = list(csv.reader(f))
    path = tmp_path / name
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows[: n + 1])
    return path


def config(tmp_path, model, **kw):
    return FinetuneConfig(**{"train": str(sample(tmp_path, "train.csv", 96)),
                             "output": str(tmp_path / "run"), "model": model, "epochs": 1,
                             "batch_size": 16, "max_length": 32, "learning_rate": 1e-3,
                             "pad_to_multiple": 32, **kw})


def test_texts_cut_at_max_length_are_counted_and_said(tmp_path, tiny_model):
    # counted here from the tokenizer without truncation
    rows = [["text", "label"]] + [[("a long review " * k).strip(), "positive" if k % 2 else
                                   "negative"] for k in range(1, 13)]
    with open(tmp_path / "long.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    tokenizer = bertdesk.load_tokenizer(tiny_model)
    events = []
    run_finetune(config(tmp_path, tiny_model, train=str(tmp_path / "long.csv"),
                        validation=str(tmp_path / "long.csv"), max_length=16,
                        pad_to_multiple=16), events.append)
    longer = sum(len(tokenizer.tokenize(text)) + 2 > 16 for text, _ in rows[1:])
    assert 0 < longer < 12
    said = [e["text"] for e in events if e["event"] == "message" and "cut to it" in e["text"]]
    assert said == [f"{longer} of 12 training examples are longer than --max-length 16 "
                    f"tokens: cut to it, their ends unseen"]


def test_classify_end_to_end(tmp_path, tiny_model):
    events = []
    # Batches padded to multiples of 8 here (up to four shapes, each compiled);
    # the other tests pad to 32, one shape, to save compile time.
    result = run_finetune(config(tmp_path, tiny_model, epochs=2, pad_to_multiple=8),
                          events.append)
    assert result["best_epoch"] in (1, 2) and len(result["history"]) == 2
    kinds = [e["event"] for e in events]
    assert kinds[0] == "message" and "train_begin" in kinds and kinds[-1] == "train_end"
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, steps[-1]["total_steps"] + 1))
    assert all(np.isfinite(e["loss"]) and e["examples_per_second"] > 0 for e in steps)
    lrs = [e["learning_rate"] for e in steps]
    peak = lrs.index(max(lrs))
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(1e-3)  # warmup from 0 to the peak
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # then linear decay
    assert lrs[-1] == pytest.approx(1e-3 / (len(lrs) - peak))
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    json.dumps(events)  # events are plain data

    run = tmp_path / "run"
    meta = json.loads((run / "model" / "bertdesk.json").read_text())
    assert meta["task"] == "classify" and meta["head"]["labels"] == ["negative", "positive"]
    assert meta["training_args"]["epochs"] == 2
    model = load_model(run / "model")
    assert model.labels == ["negative", "positive"]

    # evaluate and predict through the command line on a held-out file
    held_out = sample(tmp_path, "held.csv", 40)
    assert cli_main(["evaluate", "--model", str(run / "model"), "--data", str(held_out),
                     "--metrics-out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"accuracy", "macro_f1", "per_class"}
    for ext in ("csv", "jsonl"):
        out = tmp_path / f"pred.{ext}"
        assert cli_main(["predict", "--model", str(run / "model"), "--data", str(held_out),
                         "--output", str(out)]) == 0
    preds = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(preds) == 40 and {p["prediction"] for p in preds} <= {"negative", "positive"}
    accuracy = np.mean([p["prediction"] == p["gold"] for p in preds])
    assert accuracy == pytest.approx(metrics["accuracy"])
    with open(tmp_path / "pred.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 40
    # a .tsv of predictions, quotes, a tab and a line break in the texts, reads back as
    # bertdesk reads TSV (written CSV-style, it did not: "11 fields, the header has 10")
    tricky = tmp_path / "tricky.csv"
    with open(tricky, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], ['a "quoted" word', "positive"],
                                 ["a\ttab and a\nbreak", "negative"]])
    assert cli_main(["predict", "--model", str(run / "model"), "--data", str(tricky),
                     "--output", str(tmp_path / "pred.tsv")]) == 0
    lines = (tmp_path / "pred.tsv").read_text(encoding="utf-8").split("\n")
    assert lines[1].split("\t")[1] == 'a "quoted" word' and "a tab and a break" in lines[2]
    assert cli_main(["evaluate", "--model", str(run / "model"), "--data",
                     str(tmp_path / "pred.tsv"), "--label-column", "gold"]) == 0
    # a label column asked for by name and missing is said (it was ignored)
    assert cli_main(["predict", "--model", str(run / "model"), "--data", str(tricky),
                     "--label-column", "gold", "--output", str(tmp_path / "p2.csv")]) == 2
    assert not (tmp_path / "p2.csv").exists()
    # validation predictions of the run itself
    with open(run / "validation_predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and abs(float(rows[0]["p(negative)"]) + float(rows[0]["p(positive)"]) - 1) < 1e-5


def test_gradient_checkpointing_trains_the_same_model(tmp_path, tiny_model, monkeypatch, capsys):
    """`--gradient-checkpointing` on the command line trains, with dropout,
    to the same weights as the plain run (same seed, same masks); with
    `--events jsonl` (the app's) `--metrics-out` is written too (it was
    left out)."""
    from bertdesk.io import load_backbone
    from bertdesk.layers.bert_encoder_block import BertEncoderBlock

    calls = []
    rematerialized = BertEncoderBlock._rematerialized
    monkeypatch.setattr(BertEncoderBlock, "_rematerialized",
                        lambda self, *a: calls.append(self.name) or rematerialized(self, *a))
    run_finetune(config(tmp_path, tiny_model, output=str(tmp_path / "plain"), pad_to_multiple=8))
    assert not calls
    train = sample(tmp_path, "train.csv", 96)
    assert cli_main(["finetune", "--train", str(train), "--model", tiny_model,
                     "--output", str(tmp_path / "ckpt"), "--epochs", "1", "--batch-size", "16",
                     "--max-length", "32", "--learning-rate", "1e-3", "--pad-to-multiple", "8",
                     "--gradient-checkpointing", "--events", "jsonl",
                     "--metrics-out", str(tmp_path / "m.json")]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "result"
    assert json.loads((tmp_path / "m.json").read_text()) == events[-1]["metrics"]
    assert len(set(calls)) == 2  # both blocks of the tiny model
    meta = json.loads((tmp_path / "ckpt" / "model" / "bertdesk.json").read_text())
    assert meta["training_args"]["gradient_checkpointing"] is True
    plain, checkpointed = (load_model(tmp_path / name / "model").model
                           for name in ("plain", "ckpt"))
    assert not checkpointed.backbone.gradient_checkpointing  # a training setting, not saved
    start = load_backbone(tiny_model).get_weights()
    assert sum(not np.allclose(w, w0) for w, w0 in zip(plain.backbone.get_weights(), start)) > 10
    for a, b in zip(plain.get_weights(), checkpointed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_pretrained_checkpoint_learns_the_sample(tmp_path, minilm_folder):
    result = run_finetune(config(tmp_path, str(minilm_folder), epochs=2, learning_rate=1e-4,
                                 train=str(sample(tmp_path, "t.csv", 160))))
    assert result["metrics"]["accuracy"] >= 0.8


def test_text_pairs(tmp_path, tiny_model):
    result = run_finetune(config(tmp_path, tiny_model, train=str(ASSETS / "pairs_en.csv"),
                                 text_column="claim", text_pair_column="review",
                                 validation_fraction=0.05))
    assert set(result["metrics"]) >= {"accuracy", "macro_f1"}
    model = load_model(Path(result["model"]))
    batch = model.tokenizer(["a claim"], ["a review"], max_length=16)
    assert batch["segment_ids"].max() == 1
    assert model.model.predict(batch, verbose=0)["logits"].shape == (1, 2)


def test_multi_label_and_regression(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue"]
    with open(tmp_path / "ml.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "score"])
        for _ in range(80):
            chosen = [c for c in words if rng.random() < 0.5] or ["red"]
            w.writerow([" and ".join(chosen) + " things", ",".join(chosen), len(chosen) / 3])
    ml_config = config(tmp_path, tiny_model, train=str(tmp_path / "ml.csv"), epochs=2,
                       output=str(tmp_path / "ml"), problem_type="multi_label",
                       class_weight={"blue": 2})
    stop_in_epoch_2(ml_config)
    # a class weight on multi-label data weighs each label's positive examples
    head = json.loads((tmp_path / "ml" / "model" / "bertdesk.json").read_text())["head"]
    assert head["positive_weights"] == [2.0, 1.0, 1.0] and "class_weights" not in head
    trained = checkpoint_model(tmp_path / "ml")
    loss = trained.loss["logits"] if isinstance(trained.loss, dict) else trained.loss
    assert type(loss).__name__ == "PositiveWeightedBinaryCrossentropy"
    assert loss.positive_weights == [2.0, 1.0, 1.0]
    ml_config.resume = True  # the resumed run checks the checkpoint's weights against its own
    ml = run_finetune(ml_config)
    assert set(ml["metrics"]) >= {"accuracy", "macro_f1", "micro_f1"}
    assert load_model(Path(ml["model"])).labels == ["blue", "green", "red"]
    with pytest.raises(DataError, match="--class-weight is for classification "
                                        r"\(single- or multi-label\); this run's problem "
                                        "type is regression"):
        run_finetune(config(tmp_path, tiny_model, train=str(tmp_path / "ml.csv"),
                            output=str(tmp_path / "reg_weighted"), problem_type="regression",
                            label_column="score", class_weight="balanced"))
    events = []
    reg = run_finetune(config(tmp_path, tiny_model, train=str(tmp_path / "ml.csv"),
                              output=str(tmp_path / "reg"), problem_type="regression",
                              label_column="score"), events.append)
    assert set(reg["metrics"]) >= {"pearson", "spearman", "mse"}
    said = [e["text"] for e in events if e["event"] == "message" and e["text"].startswith("data")]
    assert said == ["data: 72 training, 8 validation examples; a regression target"]  # (labels: None)


class Interrupt(Exception):
    pass


def checkpoint_model(run):
    """The model of the checkpoint `run/checkpoint/state.json` names."""
    from bertdesk.training import resume_checkpoints

    return resume_checkpoints.load(run / "checkpoint",
                                   resume_checkpoints.read_state(run / "checkpoint"))


def stop_in_epoch_2(cfg):
    """Run `cfg` (two epochs or more) and stop it at the first step of its
    second epoch, as a kill would; returns `cfg`."""
    def killer(event):
        if event["event"] == "step" and event["epoch"] == 2:
            raise Interrupt()

    with pytest.raises(Interrupt):
        run_finetune(cfg, killer)
    return cfg


def interrupted_in_epoch_2(tmp_path, model):
    """A two-epoch run stopped at the first step of its second epoch; its config."""
    return stop_in_epoch_2(config(tmp_path, model, epochs=2))


def test_resume_continues_after_an_interruption(tmp_path, tiny_model):
    cfg = interrupted_in_epoch_2(tmp_path, tiny_model)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 1
    with pytest.raises(DataError, match="output folder is not empty"):
        run_finetune(cfg)
    events = []
    cfg.resume = True
    result = run_finetune(cfg, events.append)
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps[0] == steps[-1] // 2 + 1  # continues at the first step of epoch 2
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [2]
    assert len(result["history"]) == 2


def test_a_finished_run_keeps_no_checkpoint(tmp_path, tiny_model, monkeypatch):
    """After its last epoch a run writes no checkpoint (nothing is left to
    resume): `state.json` says it finished, the epochs before wrote theirs,
    and `--resume` on it scores the best model again without training."""
    saved, copies = [], []
    save = keras.Model.save
    monkeypatch.setattr(keras.Model, "save", lambda self, path, *a, **k: saved.append(
        Path(path).parent.name) or save(self, path, *a, **k))
    monkeypatch.setattr(keras.Model, "get_weights", lambda self: copies.append(self.name) or
                        keras.layers.Layer.get_weights(self))
    cfg = config(tmp_path, tiny_model, epochs=2)
    result = run_finetune(cfg)
    assert saved == ["checkpoint"]  # epoch 1's; not epoch 2's
    assert copies == []  # no copy of the best epoch's weights either (they are on disk)
    checkpoint = tmp_path / "run" / "checkpoint"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.json"]
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["finished"] is True and state["epochs_done"] == state["epochs"] == 2
    assert state["history"] == result["history"] and state["best_epoch"] == result["best_epoch"]

    events = []
    cfg.resume = True
    again = run_finetune(cfg, events.append)
    assert not [e for e in events if e["event"] in ("step", "epoch")]
    assert any("the run finished after epoch 2: nothing to resume" in e.get("text", "")
               for e in events)
    for key in ("accuracy", "macro_f1"):  # the saved model scored again
        assert again["metrics"][key] == pytest.approx(result["metrics"][key])
    assert again["best_epoch"] == result["best_epoch"] and again["history"] == result["history"]
    cfg.epochs = 3
    with pytest.raises(DataError, match=r"run finished \(2 of its 2 epochs\); --resume continues "
                                        r"an interrupted run with the same --epochs \(got 3\)"):
        run_finetune(cfg)


def test_early_stopping_finishes_the_run(tmp_path, tiny_model, monkeypatch):
    scores = iter([0.9, 0.8, 0.7, 0.6])  # worse every epoch: patience 1 stops after epoch 2
    monkeypatch.setattr(TASKS["classify"], "metrics",
                        lambda *a: {"accuracy": next(scores, 0.0)})
    cfg = config(tmp_path, tiny_model, epochs=4, early_stopping_patience=1)
    result = run_finetune(cfg)
    assert len(result["history"]) == 2 and result["best_epoch"] == 1
    checkpoint = tmp_path / "run" / "checkpoint"
    state = json.loads((checkpoint / "state.json").read_text())
    assert (state["finished"], state["epochs_done"], state["epochs"]) == (True, 2, 4)
    assert sorted(p.name for p in checkpoint.iterdir()) == ["state.json"]
    cfg.resume = True
    events = []
    run_finetune(cfg, events.append)  # the same --epochs: finished, nothing trains
    assert not [e for e in events if e["event"] == "step"]
    cfg.epochs = 5
    with pytest.raises(DataError, match=r"\(2 of its 4 epochs, early stopping\)"):
        run_finetune(cfg)


@pytest.mark.parametrize("scores, patience, epochs_run, best", [
    ([math.nan, 0.5, 0.6, 0.7, 0.8], 1, 5, 5),  # Keras' EarlyStopping kept NaN as its best: 2
    ([0.8, 0.7, 0.7, 0.9, 0.9], 2, 3, 1),
])
def test_early_stopping_counts_from_the_saved_best_and_across_a_resume(
        tmp_path, tiny_model, monkeypatch, scores, patience, epochs_run, best):
    """Early stopping reads the best epoch as the saved model does (NaN is
    worse than any number) and goes on counting after --resume (Keras'
    count of epochs waited started again: 5 epochs instead of 3)."""
    def run(out, seq, resume=False, stop_in_epoch=None):
        it = iter(seq)
        monkeypatch.setattr(TASKS["classify"], "metrics", lambda *a: {"accuracy": next(it, 0.0)})

        def sink(event):
            if stop_in_epoch and event["event"] == "step" and event["epoch"] == stop_in_epoch:
                raise KeyboardInterrupt
        cfg = config(tmp_path, tiny_model, output=str(tmp_path / out), epochs=5,
                     early_stopping_patience=patience, resume=resume)
        return run_finetune(cfg, sink)

    whole = run("whole", scores)
    assert (len(whole["history"]), whole["best_epoch"]) == (epochs_run, best)
    if epochs_run >= 3:
        with pytest.raises(KeyboardInterrupt):
            run("resumed", scores, stop_in_epoch=3)
        again = run("resumed", scores[2:], resume=True)
        assert (len(again["history"]), again["best_epoch"]) == (epochs_run, best)


def test_label_order_never_depends_on_the_order_labels_are_met():
    """Equal numbers and "nan" tied or broke the sort, so the order followed
    the label set's iteration, which changes with PYTHONHASHSEED."""
    import random

    from bertdesk.training.finetune import _natural_key

    labels = ["01", "1", "nan", "2", "1e0", "inf", "10", "b", "a"]
    expected = ["01", "1", "1e0", "2", "10", "inf", "a", "b", "nan"]
    rng = random.Random(0)
    for _ in range(20):
        rng.shuffle(labels)
        assert sorted(labels, key=_natural_key) == expected


def test_a_resume_with_other_labels_is_refused(tmp_path, tiny_model):
    """The head's rows stand for the labels the run started with: data
    giving another label list was resumed, training on permuted targets."""
    def sink(event):
        if event["event"] == "step" and event["epoch"] == 2:
            raise KeyboardInterrupt
    cfg = config(tmp_path, tiny_model, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(cfg, sink)
    train = Path(cfg.train)  # the same file, edited since (another file: refused by name)
    original = train.read_text(encoding="utf-8")
    rows = original.splitlines()
    train.write_text("\n".join([rows[0]] + [r.replace(",positive", ",upbeat") for r in rows[1:]])
                     + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"run was started with labels \['negative', 'positive'\]; "
                                        r"this data gives \['negative', 'upbeat'\]"):
        run_finetune(replace(cfg, resume=True))
    train.write_text(original, encoding="utf-8")
    assert run_finetune(replace(cfg, resume=True))["best_epoch"] >= 1


def test_a_resume_with_other_data_settings_is_refused(tmp_path, tiny_model):
    """A finished run "resumed" on another file was scored on it, its
    metrics overwritten (an MRPC run on RTE); an interrupted one took another
    --max-length without a word. Both refused, naming the setting."""
    cfg = config(tmp_path, tiny_model, epochs=1)
    run_finetune(cfg)
    metrics = (tmp_path / "run" / "metrics.json").read_bytes()
    other = sample(tmp_path, "other.csv", 96)
    with pytest.raises(DataError, match=rf"the run was started with --train {cfg.train}; "
                                        rf"resume it with the same \(got {other}\)"):
        run_finetune(replace(cfg, train=str(other), resume=True))
    assert (tmp_path / "run" / "metrics.json").read_bytes() == metrics
    for change in ({"max_length": 16}, {"seed": 1}, {"validation_fraction": 0.2}):
        name = "--" + next(iter(change)).replace("_", "-")
        with pytest.raises(DataError, match=f"the run was started with {name} "):
            run_finetune(replace(cfg, resume=True, **change))
    # the same file under another spelling is the same data
    spelled = str(Path(cfg.train).parent / "." / Path(cfg.train).name)
    assert run_finetune(replace(cfg, train=spelled, resume=True))["best_epoch"] == 1
    # recorded relative to the folder the run was started from: another file of the
    # same name in another folder is other data
    meta = tmp_path / "run" / "model" / "bertdesk.json"
    recorded = json.loads(meta.read_text())
    recorded["training_args"]["train"] = os.path.relpath(cfg.train)
    meta.write_text(json.dumps(recorded))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    twin = elsewhere / Path(cfg.train).name
    twin.write_bytes(Path(cfg.train).read_bytes())
    with pytest.raises(DataError, match="the run was started with --train "):
        run_finetune(replace(cfg, train=str(twin), resume=True))
    assert run_finetune(replace(cfg, resume=True))["best_epoch"] == 1


def test_resume_checkpoints_swap_in_whole(tmp_path, monkeypatch):
    """A checkpoint is a Keras folder renamed in, then named by state.json;
    the one it replaces, a `last.keras` of earlier versions and leftovers of
    interrupted writes go; a write that fails changes nothing."""
    from bertdesk.training import resume_checkpoints as rc

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    folder = tmp_path / "checkpoint"

    def trained_state(m):
        return ([np.asarray(w) for w in m.get_weights()],
                int(keras.ops.convert_to_numpy(m.optimizer.iterations)))

    model.fit(x, y, epochs=1, verbose=0)
    # an earlier version's checkpoint, and an interrupted write's leftovers
    folder.mkdir()
    model.save(folder / "last.keras")
    (folder / ".epoch-9.abc.partial").mkdir()
    (folder / ".last.abc.keras").write_bytes(b"partial")
    (folder / ".state.json.abc.tmp").write_text("{")
    assert rc.load(folder, {"epochs_done": 1}).get_weights()[0].shape == (3, 2)  # legacy
    rc.write(model, folder, "epoch-1", {"epochs_done": 1})
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-1", "state.json"]
    assert (folder / "epoch-1" / "model.weights.h5").is_file()
    assert rc.read_state(folder) == {"epochs_done": 1, "checkpoint": "epoch-1"}
    weights, steps = trained_state(rc.load(folder, rc.read_state(folder)))
    assert steps == 1
    for a, b in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    model.fit(x, y, epochs=1, verbose=0)
    (folder / "epoch-2").mkdir()  # a run stopped after renaming it in, before state.json
    (folder / "epoch-2" / "model.weights.h5").write_bytes(b"stale")
    rc.write(model, folder, "epoch-2", {"epochs_done": 2})
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-2", "state.json"]
    assert trained_state(rc.load(folder, rc.read_state(folder)))[1] == 2
    with pytest.raises(ValueError, match="state.json names this checkpoint"):
        rc.write(model, folder, "epoch-2", {"epochs_done": 2})

    def fails(self, path, **kwargs):
        (Path(path) / "config.json").write_text("{")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", fails)
    with pytest.raises(OSError, match="disk full"):
        rc.write(model, folder, "epoch-3", {"epochs_done": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-2", "state.json"]
    assert rc.read_state(folder)["checkpoint"] == "epoch-2"


@pytest.mark.parametrize("improved,best,copied,restore", [
    ((True, True, False), 2, [1, 2], True),  # the best weights put back at the end
    ((True, False, True), 3, [1], True),  # the last epoch is the best: no copy of it
    ((True, True, False), 2, [], False),  # fine-tuning's: no copy, the last weights stay
])
def test_best_model_keeper(improved, best, copied, restore):
    from bertdesk.training.callbacks import BestModelKeeper

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")
    flags, weights, copies, saved = iter(improved), [], [], []
    get_weights = model.get_weights

    def copy():
        copies.append(len(weights))
        return get_weights()

    model.get_weights = copy
    marker = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: (
        logs.update(_improved=next(flags)), weights.append(get_weights())))
    keeper = BestModelKeeper(saved.append, restore_best_weights=restore)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[marker, keeper])
    assert keeper.best_epoch == best and saved == [e for e, i in enumerate(improved, 1) if i]
    assert copies == copied  # get_weights at the end of these epochs (1-based)
    for now, kept in zip(get_weights(), weights[best - 1 if restore else 2], strict=True):
        np.testing.assert_array_equal(now, kept)
    assert not all(np.array_equal(a, b) for a, b in zip(weights[0], weights[2]))  # it trained


@pytest.mark.parametrize("older_checkpoint", [False, True])
def test_a_resumed_epoch_that_does_not_improve_keeps_the_earlier_best(tmp_path, tiny_model,
                                                                      monkeypatch,
                                                                      older_checkpoint):
    cfg = interrupted_in_epoch_2(tmp_path, tiny_model)
    if older_checkpoint:  # written before state.json kept the best epoch
        state_file = tmp_path / "run" / "checkpoint" / "state.json"
        state = json.loads(state_file.read_text())
        del state["best_epoch"]
        state_file.write_text(json.dumps(state))
    saved = {p.name: p.read_bytes() for p in (tmp_path / "run" / "model").iterdir()}
    # epoch 2 now scores below epoch 1, whatever it learns
    monkeypatch.setattr(TASKS["classify"], "metrics", lambda *a: {"accuracy": -1.0})
    cfg.resume = True
    result = run_finetune(cfg)
    assert result["best_epoch"] == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "model").iterdir()} == saved


def test_the_runs_validation_results_are_the_saved_models(tmp_path, tiny_model):
    """The run reports the best epoch's validation scores without scoring
    the saved model again: they must be what the saved model gives."""
    val = sample(tmp_path, "val.csv", 24)
    cfg = config(tmp_path, tiny_model, epochs=2, validation=str(val))
    result = run_finetune(cfg)
    best = load_model(tmp_path / "run" / "model")
    task = TASKS["classify"]
    data = task.load(str(val), asdict(cfg))
    scores = task.scores(best.model, best.tokenizer, data, best.head, cfg.max_length)
    with open(tmp_path / "run" / "validation_predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    reported = np.array([[float(r["p(negative)"]), float(r["p(positive)"])] for r in rows])
    np.testing.assert_allclose(reported, np.asarray(scores), atol=1e-6)
    assert result["metrics"]["accuracy"] == result["history"][result["best_epoch"] - 1]["accuracy"]


def test_unknown_label_in_validation_data(tmp_path, tiny_model):
    val = tmp_path / "val.csv"
    val.write_text("text,label\nfine,positive\nmeh,neutral\n")
    with pytest.raises(DataError, match=r"val.csv: row 2: label 'neutral' is not one the model "
                                        r"knows \(negative, positive\)"):
        run_finetune(config(tmp_path, tiny_model, validation=str(val)))


def test_adamw_excludes_layernorm_and_bias_from_weight_decay():
    from bertdesk.training.optimization import bert_adamw

    model = bertdesk.BertBackbone(vocabulary_size=50, num_layers=1, hidden_dim=8, num_heads=2,
                                  intermediate_dim=16)
    opt = bert_adamw(1e-3, 100)
    opt.build(model.trainable_variables)
    decayed = {v.path.split("/")[-1] for v in model.trainable_variables if opt._use_weight_decay(v)}
    assert decayed == {"kernel", "embeddings"}
    # a resumed run rebuilds the optimizer from its config: the exclusions must survive
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    again.build(model.trainable_variables)
    assert {v.path.split("/")[-1] for v in model.trainable_variables
            if again._use_weight_decay(v)} == decayed


FUSED = keras.backend.backend() in ("torch", "tensorflow")


@pytest.mark.skipif(not FUSED, reason="the fused update is PyTorch's and TensorFlow's")
@pytest.mark.parametrize("dot_norm_elements", [None, 20])
def test_fused_adamw_matches_keras_adamw(dot_norm_elements, monkeypatch):
    """The fused update (clipping, decay exclusions, bias correction,
    epsilon) gives Keras' own AdamW numbers, step after step; on PyTorch
    also with the clipping norm of the larger gradients taken by dot
    products (the path of gradients of a million elements and more), and,
    like Keras' update, it bumps the variables' version counters."""
    from bertdesk.training import optimization
    from bertdesk.training.optimization import bert_adamw

    torch_backend = keras.backend.backend() == "torch"
    if dot_norm_elements is not None:
        if not torch_backend:
            pytest.skip("PyTorch's clipping norm")
        monkeypatch.setattr(optimization, "_DOT_NORM_ELEMENTS", dot_norm_elements)

    rng = np.random.default_rng(0)
    values = [rng.normal(size=s).astype("float32") for s in [(6, 4), (4,), (4,), (5, 4)]]
    names = ["kernel", "bias", "gamma", "embeddings"]
    # gradient norms from 0.02 to 20: clipping to 1.0 is off for some steps, on for others
    step_grads = [[rng.normal(scale=10.0 ** (step % 3 - 2), size=v.shape).astype("float32")
                   for v in values] for step in range(6)]
    results = []
    for fused in (False, True):
        variables = [keras.Variable(v, name=n) for v, n in zip(values, names)]
        opt = bert_adamw(0.05, total_steps=10, warmup_ratio=0.2, weight_decay=0.1,
                         max_grad_norm=1.0, epsilon=1e-3, fused=fused)  # eps matters
        assert opt.fused is fused
        versions = [v.value._version for v in variables] if torch_backend else None
        for grads in step_grads:
            opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        # in-place writes that autograd (and kept weight casts) can see
        if torch_backend:
            assert all(v.value._version > old for v, old in zip(variables, versions))
        results.append([keras.ops.convert_to_numpy(v) for v in variables])
    for plain, fast in zip(*results):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
    assert not np.allclose(results[0][0], values[0])  # it did train


@pytest.mark.skipif(not FUSED, reason="the fused update is PyTorch's and TensorFlow's")
@pytest.mark.parametrize("clipping", [{"clipnorm": 1.0}, {"clipvalue": 0.5}])
def test_fused_adamw_clips_per_variable_as_keras_does(clipping):
    """`clipnorm` and `clipvalue` (each variable's gradient clipped on its
    own) were skipped by the fused PyTorch update, which clips by the
    global norm alone: 7.6e-2 apart after three steps. And a `fused=False`
    optimizer stays so when saved and loaded."""
    from bertdesk.training.optimization import BertAdamW

    rng = np.random.default_rng(1)
    values = [rng.normal(size=s).astype("float32") for s in [(6, 4), (4,)]]
    step_grads = [[rng.normal(scale=scale, size=v.shape).astype("float32") for v in values]
                  for scale in (100.0, 0.3, 7.0)]
    results = []
    for fused in (False, True):
        variables = [keras.Variable(v, name=n) for v, n in zip(values, ("kernel", "bias"))]
        opt = BertAdamW(learning_rate=0.05, weight_decay=0.01, fused=fused, **clipping)
        for grads in step_grads:
            opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        results.append([keras.ops.convert_to_numpy(v) for v in variables])
    for plain, fast in zip(*results):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
    assert keras.optimizers.deserialize(keras.optimizers.serialize(
        BertAdamW(learning_rate=0.1, fused=False))).fused is False
    assert BertAdamW(learning_rate=0.1).get_config()["fused"] is None  # each backend's default


@pytest.mark.skipif(not FUSED, reason="the fused update is PyTorch's and TensorFlow's")
def test_fused_adamw_follows_the_variables_it_is_given():
    """The fused update keeps its argument lists from step to step; given
    the same variables in another order, or only some of them, it updates
    each variable with its own gradient and moments, as Keras' AdamW does;
    and what it keeps does not become part of the optimizer's saved state."""
    from bertdesk.training.optimization import bert_adamw

    rng = np.random.default_rng(1)
    values = [rng.normal(size=(3, 2)).astype("float32") for _ in range(4)]
    names = ["kernel", "bias", "kernel_2", "gamma"]
    grads = [[rng.normal(size=(3, 2)).astype("float32") for _ in values] for _ in range(5)]
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3], [2, 0], [1, 3, 0, 2]]
    results = []
    for fused in (False, True):
        variables = [keras.Variable(v, name=n) for v, n in zip(values, names)]
        opt = bert_adamw(0.05, total_steps=10, warmup_ratio=0.0, weight_decay=0.1, fused=fused)
        opt.build(variables)
        own = [v.path for v in opt.variables]
        for step_grads, order in zip(grads, orders):
            opt.apply([keras.ops.convert_to_tensor(step_grads[i]) for i in order],
                      [variables[i] for i in order])
        # what it keeps is not counted (nor saved) as the optimizer's state
        assert [v.path for v in opt.variables] == own
        results.append([keras.ops.convert_to_numpy(v) for v in variables])
    for plain, fast in zip(*results):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
    # each variable moved by its own number of steps (0 and 2 took five, 1 and 3 four)
    assert not np.allclose(results[1][3], values[3])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's kernels")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fused_tensorflow_adamw_runs_its_kernels_in_the_step(jit_compile):
    """Inside a compiled step (a `tf.function`, with and without XLA), the
    TensorFlow update is one Adam kernel per variable and one decay kernel
    per decayed variable, and its numbers are Keras' AdamW's, also for a
    sparse (`IndexedSlices`) gradient, as an embedding lookup's is; Keras'
    code made about twenty ops per variable."""
    import tensorflow as tf

    from bertdesk.training.optimization import bert_adamw

    rng = np.random.default_rng(4)
    values = [rng.normal(size=s).astype("float32") for s in [(6, 4), (4,), (5, 3)]]
    names = ["kernel", "bias", "embeddings"]
    dense = [[rng.normal(size=v.shape).astype("float32") for v in values[:2]]
             for _ in range(4)]
    rows = [rng.integers(0, 5, 3) for _ in range(4)]
    updates = [rng.normal(size=(3, 3)).astype("float32") for _ in range(4)]
    results, kernels = [], []
    for fused in (False, True):
        variables = [keras.Variable(v, name=n) for v, n in zip(values, names)]
        opt = bert_adamw(0.05, total_steps=10, warmup_ratio=0.2, weight_decay=0.1,
                         max_grad_norm=1.0, epsilon=1e-3, fused=fused)
        opt.build(variables)

        @tf.function(jit_compile=jit_compile)
        def step(g0, g1, idx, upd):
            sparse = tf.IndexedSlices(upd, idx, dense_shape=tf.constant([5, 3], tf.int64))
            opt.apply([g0, g1, sparse], variables)

        for g, idx, upd in zip(dense, rows, updates):
            step(*g, tf.constant(idx, tf.int64), upd)
        graph = step.get_concrete_function(*dense[0], tf.constant(rows[0], tf.int64),
                                           updates[0]).graph
        ops = [op.type for op in graph.get_operations()]
        kernels.append((ops.count("ResourceApplyAdam"), ops.count("ResourceApplyGradientDescent")))
        results.append([keras.ops.convert_to_numpy(v) for v in variables])
    assert kernels == [(0, 0), (3, 2)]  # the bias is not decayed
    for plain, fast in zip(*results):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
    assert not np.allclose(results[1][2], values[2])  # it did train


# Keras' AdamW and the fused one under a MirroredStrategy over two logical
# CPUs (devices are fixed when TensorFlow starts: a process of its own).
MIRRORED = """
import numpy as np, tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from bertdesk.training.optimization import bert_adamw
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
values = [rng.normal(size=s).astype("float32") for s in [(6, 4), (4,)]]
grads = [[rng.normal(size=v.shape).astype("float32") for v in values] for _ in range(3)]
for fused in (False, True):
    with strategy.scope():
        variables = [keras.Variable(v, name=n) for v, n in zip(values, ["kernel", "bias"])]
        opt = bert_adamw(0.05, total_steps=10, warmup_ratio=0.2, weight_decay=0.1, fused=fused)
        opt.build(variables)

    @tf.function
    def step(g0, g1):
        strategy.run(lambda: opt.apply([g0, g1], variables))

    for g in grads:
        step(*g)
    # each variable as (replica, ...): its copy on every device
    np.savez(f"{OUT}/{fused}.npz", *[np.stack([c.numpy() for c in v.value.values])
                                     for v in variables])
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's kernels")
def test_fused_tensorflow_adamw_updates_every_replica_as_keras_does(tmp_path):
    """Under a distribution strategy each replica's copy of a variable gets
    the update Keras' AdamW gives it (the kernels take the replica's
    handles inside `extended.update`)."""
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "tensorflow",
           "PYTHONPATH": str(Path(bertdesk.__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-c", f"OUT = {str(tmp_path)!r}\n" + MIRRORED],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    plain, fused = ([f[k] for k in sorted(f.files)] for f in (
        np.load(tmp_path / f"{name}.npz") for name in (False, True)))
    assert [a.shape for a in fused] == [(2, 6, 4), (2, 4)]  # two replicas each
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a[0], a[1])  # the two replicas agree
    rng = np.random.default_rng(0)  # the script's starting values: it trained
    start = [rng.normal(size=s).astype("float32") for s in [(6, 4), (4,)]]
    assert not np.allclose(plain[0][0], start[0])


def test_warmup_linear_decay_on_the_host_is_the_schedule():
    from bertdesk.training.optimization import WarmupLinearDecay

    schedule = WarmupLinearDecay(3e-5, 7, 50)
    for step in [0, 1, 3, 6, 7, 8, 30, 49, 50, 51, 80]:
        device = float(keras.ops.convert_to_numpy(schedule(step)))
        assert schedule.host_value(step) == pytest.approx(device, rel=1e-7, abs=1e-12), step


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the fused PyTorch update")
def test_fused_adamw_reads_its_step_from_the_device_only_after_outside_writes(monkeypatch):
    """The fused update counts steps on the host (on a GPU each read of the
    counter waits for the backward pass); a write to `iterations` other than
    Keras' own increment (a restore, `assign`) makes it read again, and its
    updates stay those of Keras' AdamW throughout."""
    from bertdesk.training import optimization
    from bertdesk.training.optimization import bert_adamw

    rng = np.random.default_rng(2)
    values = [rng.normal(size=(3, 2)).astype("float32") for _ in range(2)]
    grads = [[rng.normal(size=(3, 2)).astype("float32") for _ in values] for _ in range(6)]
    reads = []
    to_numpy = keras.ops.convert_to_numpy
    monkeypatch.setattr(optimization.keras.ops, "convert_to_numpy",
                        lambda x: reads.append(1) or to_numpy(x))
    results = []
    for fused in (False, True):
        variables = [keras.Variable(v, name=n) for v, n in zip(values, ["kernel", "bias"])]
        opt = bert_adamw(0.05, total_steps=12, warmup_ratio=0.25, weight_decay=0.1, fused=fused)
        opt.build(variables)
        reads.clear()
        for i, step_grads in enumerate(grads):
            if i == 4:
                opt.iterations.assign(9)  # as a restore would: later in the schedule
            opt.apply([keras.ops.convert_to_tensor(g) for g in step_grads], variables)
        if fused:
            assert len(reads) == 2  # the first update and the one after the assign
        results.append([to_numpy(v) for v in variables])
    for plain, fast in zip(*results):
        np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile")
def test_fused_adamw_under_torch_compile_trains_as_eager():
    """`jit_compile=True` on PyTorch (torch.compile) with the fused AdamW and
    clipping: the fused kernel's in-place updates cannot be traced (PyTorch
    raised an internal assert), so the compiled step uses Keras' update; the
    losses equal the eager run's."""
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier
    from bertdesk.training.optimization import bert_adamw

    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(5, 100, (8, 16)).astype("int32"),
         "segment_ids": np.zeros((8, 16), "int32"), "padding_mask": np.ones((8, 16), "int32")}
    y = rng.integers(0, 2, (8,)).astype("int32")
    losses = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        backbone = bertdesk.BertBackbone(vocabulary_size=100, num_layers=1, hidden_dim=16,
                                         num_heads=2, intermediate_dim=32, dropout=0.0)
        model = BertTextClassifier(backbone, num_classes=2)
        model.compile(optimizer=bert_adamw(1e-2, 10, max_grad_norm=0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit)
        assert model.optimizer.fused
        losses.append([float(model.train_on_batch(x, y)) for _ in range(3)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert losses[0][2] != losses[0][0]  # it trained


@pytest.mark.parametrize("optimizer", ["adamw", "adamw_fused", "lamb"])
def test_accumulated_updates_are_the_mean_of_their_batches(optimizer):
    """Gradient accumulation over k=3 calls: each update is the one a
    non-accumulating optimizer makes from the mean of the group's gradients,
    with the schedule at the update's count (Keras' own schedule counted
    calls, reaching 0 k times too early), clipping and weight decay; a group
    cut short by `apply_accumulated` (an epoch's end) updates from the mean
    of the batches it has, and the next group starts after it. On PyTorch
    the fused update accumulates in place."""
    from bertdesk.training.optimization import (BertLamb, WarmupLinearDecay,
                                                apply_accumulated, bert_adamw)

    if optimizer == "adamw_fused" and not FUSED:
        pytest.skip("the fused update is PyTorch's and TensorFlow's")

    def make(k):
        if optimizer == "lamb":
            return BertLamb(WarmupLinearDecay(0.05, 2, 6), weight_decay=0.1,
                            global_clipnorm=1.0, gradient_accumulation_steps=k if k > 1 else None)
        return bert_adamw(0.05, total_steps=6, warmup_ratio=0.34, weight_decay=0.1,
                          max_grad_norm=1.0, epsilon=1e-3, gradient_accumulation=k,
                          fused=(optimizer == "adamw_fused") if FUSED else None)

    rng = np.random.default_rng(3)
    values = [rng.normal(size=s).astype("float32") for s in [(5, 3), (3,)]]
    names = ["kernel", "bias"]
    # norms from 0.03 to 30: the clipping to 1.0 acts on some updates only
    grads = [[rng.normal(scale=10.0 ** (i % 3 - 1.5), size=v.shape).astype("float32")
              for v in values] for i in range(13)]
    groups = [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9, 10], [11, 12]]  # cut after 4 and at the end

    def variables():
        return [keras.Variable(v, name=n) for v, n in zip(values, names)]

    accumulated, opt = variables(), make(3)
    unused = keras.Variable(np.ones((2, 2), "float32"), name="kernel")  # never gets a gradient
    opt.build(accumulated + [unused])
    for i, g in enumerate(grads):
        opt.apply([keras.ops.convert_to_tensor(x) for x in g], accumulated)
        if i in (4, 12):
            assert apply_accumulated(opt) == 2
    assert apply_accumulated(opt) == 0  # nothing left waiting
    # left alone, as Keras leaves a variable without gradients (no decay, no moments)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(unused), np.ones((2, 2)))
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == len(groups)
    direct, ref = variables(), make(1)
    for group in groups:
        ref.apply([keras.ops.convert_to_tensor(np.mean([grads[i][j] for i in group], 0))
                   for j in range(len(values))], direct)
    for a, b in zip(accumulated, direct):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(keras.ops.convert_to_numpy(accumulated[0]), values[0])


def test_fit_with_accumulation_is_fit_with_the_larger_batches():
    """`fit` on batches of 4 with 2 batches per update, over two epochs of
    9 batches (each epoch's last update from its one leftover batch), gives
    the weights of `fit` on batches of 8 (and a last one of 4): the same
    examples in the same order, no dropout, so the same updates."""
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier
    from bertdesk.training.callbacks import ApplyAccumulated
    from bertdesk.training.optimization import bert_adamw

    rng = np.random.default_rng(0)
    n = 36
    x = {"token_ids": rng.integers(5, 100, (n, 12)).astype("int32"),
         "segment_ids": np.zeros((n, 12), "int32"), "padding_mask": np.ones((n, 12), "int32")}
    y = rng.integers(0, 2, (n,)).astype("int32")
    weights = []
    for batch_size, k in ((8, 1), (4, 2)):
        keras.utils.set_random_seed(0)
        backbone = bertdesk.BertBackbone(vocabulary_size=100, num_layers=1, hidden_dim=16,
                                         num_heads=2, intermediate_dim=32, dropout=0.0,
                                         attention_dropout=0.0)
        model = BertTextClassifier(backbone, num_classes=2)
        model.compile(optimizer=bert_adamw(1e-2, 10, warmup_ratio=0.2, gradient_accumulation=k),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=batch_size, epochs=2, shuffle=False, verbose=0,
                  callbacks=[ApplyAccumulated()])
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 10
        weights.append([keras.ops.convert_to_numpy(v) for v in model.trainable_variables])
    for a, b in zip(*weights):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5)


def test_warmup_then_linear_decay():
    from bertdesk.training.optimization import WarmupLinearDecay

    s = WarmupLinearDecay(1.0, 10, 110)
    values = [float(keras.ops.convert_to_numpy(s(i))) for i in (0, 5, 10, 60, 110, 200)]
    assert values == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0])


@pytest.mark.parametrize("source,fmt", [("ner_en.conll", "conll"), ("ner_zh.bmes", "bmes")])
def test_ner_end_to_end(tmp_path, tiny_model, source, fmt):
    text = (ASSETS / source).read_text(encoding="utf-8").split("\n\n")
    train, held = tmp_path / f"train.{fmt}", tmp_path / f"held.{fmt}"
    train.write_text("\n\n".join(text[:60]) + "\n", encoding="utf-8")
    held.write_text("\n\n".join(text[250:270]) + "\n", encoding="utf-8")
    result = run_finetune(config(tmp_path, tiny_model, task="ner", format=fmt, train=str(train),
                                 epochs=2, learning_rate=3e-3))
    assert set(result["metrics"]) >= {"precision", "recall", "f1", "per_type"}
    model = load_model(Path(result["model"]))
    assert model.task == "ner" and model.labels[0] == "O"
    assert set(model.labels) == {"O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"}
    run = tmp_path / "run"
    assert cli_main(["evaluate", "--model", str(run / "model"), "--data", str(held),
                     "--metrics-out", str(tmp_path / "m.json")]) == 0
    assert set(json.loads((tmp_path / "m.json").read_text())) >= {"precision", "recall", "f1"}
    assert cli_main(["predict", "--model", str(run / "model"), "--data", str(held),
                     "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    assert all(len(r["prediction"].split()) == len(r["words"].split()) for r in rows)


def test_ner_sentences_cut_at_max_length_are_counted(tmp_path, tiny_model):
    """Training cuts a NER sentence at --max-length, as a text: the run says
    how many (it said nothing, and their last words went unlabelled)."""
    from bertdesk.data.ner import TaggedSentences
    from bertdesk.training.tasks import NerTask

    tokenizer = bertdesk.load_tokenizer(tiny_model)
    words = [["Ann"] * 40, ["Ann", "runs"], ["Bob"] * 14, ["Bob"] * 15]
    data = TaggedSentences(words, [["B-PER"] + ["O"] * (len(w) - 1) for w in words], "x", [1] * 4)
    task = NerTask()
    head = task.make_head(data, config(tmp_path, tiny_model))
    ds = task.dataset(tokenizer, data, head, config(tmp_path, tiny_model, max_length=16),
                      train=True)
    assert ds.cut == sum(len(tokenizer.encode_words([w], max_length=None)[0][0]) > 16
                         for w in words) == 2


def test_ner_run_says_how_many_sentences_it_cut(tmp_path, tiny_model):
    """The whole run with sentences longer than --max-length: it trains and
    says how many were cut (the message took len() of the sentences, which
    have none: a TypeError before the first step)."""
    sentences = [[("Ann", "B-PER")] + [("runs", "O")] * n for n in (1, 30, 3, 40, 5, 2)]
    path = tmp_path / "long.conll"
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n",
                    encoding="utf-8")
    events = []
    run_finetune(config(tmp_path, tiny_model, task="ner", format="conll", train=str(path),
                        validation=str(path), max_length=16, pad_to_multiple=16),
                 events.append)
    said = [e["text"] for e in events if e["event"] == "message" and "cut to it" in e["text"]]
    assert said == ["2 of 6 training sentences are longer than --max-length 16 tokens: "
                    "cut to it, their ends unseen"]


def test_ner_unknown_tag_in_validation(tmp_path, tiny_model):
    train = tmp_path / "t.conll"
    train.write_text("Alice B-PER\nruns O\n\nBob B-PER\n\n")
    val = tmp_path / "v.conll"
    val.write_text("Paris B-LOC\n\n")
    with pytest.raises(DataError, match=r"v.conll: line 1: tag 'B-LOC' is not one the model knows"):
        run_finetune(config(tmp_path, tiny_model, task="ner", train=str(train),
                            validation=str(val)))


@pytest.mark.backend_neutral
def test_demo_never_overwrites_an_earlier_run(tmp_path, monkeypatch):
    import bertdesk.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_cmd_finetune", lambda a: seen.append(a))
    out = tmp_path / "demo"
    assert cli_main(["demo", "--output", str(out)]) == 0
    out.mkdir()
    (out / "model").mkdir()
    (tmp_path / "demo-2").mkdir()
    (tmp_path / "demo-2" / "x").write_text("")
    assert cli_main(["demo", "--output", str(out)]) == 0
    assert [a.output for a in seen] == [str(out), str(tmp_path / "demo-3")]
    assert seen[0].train.endswith("sentiment_en.csv") and seen[0].model == "bundled"


def test_qa_end_to_end(tmp_path, tiny_model):
    result = run_finetune(config(tmp_path, tiny_model, task="qa", format="squad",
                                 train=str(ASSETS / "qa_en.json"), max_length=48,
                                 doc_stride=16, validation_fraction=0.2, epochs=2,
                                 learning_rate=3e-3))
    metrics = result["metrics"]
    assert set(metrics) >= {"exact_match", "f1"} and 0 <= metrics["f1"] <= 100
    model = load_model(Path(result["model"]))
    assert model.task == "qa" and model.head["max_answer_length"] == 30
    run = tmp_path / "run"
    assert cli_main(["evaluate", "--model", str(run / "model"), "--data",
                     str(ASSETS / "qa_en.json"), "--metrics-out", str(tmp_path / "m.json")]) == 0
    assert set(json.loads((tmp_path / "m.json").read_text())) >= {"exact_match", "f1"}
    assert cli_main(["predict", "--model", str(run / "model"), "--data",
                     str(ASSETS / "qa_en.json"), "--output", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 240 and all(r["prediction"] in CONTEXTS[r["id"]] for r in rows)


CONTEXTS = {qa["id"]: p["context"]
            for a in json.loads((ASSETS / "qa_en.json").read_text())["data"]
            for p in a["paragraphs"] for qa in p["qas"]}


def test_qa_v2_null_threshold_is_tuned_on_validation(tmp_path, tiny_model):
    """SQuAD 2.0: the null threshold with the best validation F1 is saved
    with the model (the official script's best_f1_thresh), the run's F1 is
    at it, and evaluate/predict/the Predictor decide at it unless told
    otherwise."""
    from bertdesk.data.qa import tune_null_threshold
    from bertdesk.data.squad import read_squad, squad_metrics
    from bertdesk.predictor import Predictor
    from bertdesk.training.tasks import get_task

    articles = json.loads((ASSETS / "qa_en_v2.json").read_text())["data"]
    train, held = tmp_path / "train.json", tmp_path / "held.json"
    train.write_text(json.dumps({"version": "v2.0", "data": articles[:30]}))
    held.write_text(json.dumps({"version": "v2.0", "data": articles[30:40]}))
    result = run_finetune(config(tmp_path, tiny_model, task="qa", format="squad",
                                 train=str(train), validation=str(held), max_length=48,
                                 doc_stride=16, epochs=1, learning_rate=3e-3))
    model = load_model(Path(result["model"]))
    assert model.head["version"] == "2.0" and model.head["null_threshold_from"] == "validation"
    data = read_squad(held)
    scores = get_task("qa").scores(model.model, model.tokenizer, data, model.head, 48)
    threshold, best_f1 = tune_null_threshold(data.examples, scores.found)
    assert model.head["null_threshold"] == pytest.approx(threshold, abs=1e-4)
    metrics = result["metrics"]
    assert metrics["null_threshold"] == model.head["null_threshold"]
    assert metrics["f1"] == pytest.approx(best_f1) == pytest.approx(metrics["best_f1"])
    assert metrics["best_f1_thresh"] == pytest.approx(threshold, abs=1e-4)
    assert {"HasAns_f1", "NoAns_f1", "best_exact", "best_exact_thresh"} <= set(metrics)

    # evaluate at the model's threshold, at another, and with no null answers
    seen = {}
    for extra in ([], ["--null-threshold", "none"], ["--null-threshold", "1e9"],
                  ["--null-threshold=-1e9"]):
        out = tmp_path / f"m{len(seen)}.json"
        assert cli_main(["evaluate", "--model", result["model"], "--data", str(held),
                         "--metrics-out", str(out)] + extra) == 0
        seen[" ".join(extra)] = json.loads(out.read_text())
    assert seen[""]["f1"] == pytest.approx(metrics["f1"])
    # every question gets its best span (the few with no valid span in the 20
    # best starts and ends of this barely trained model get "")
    spans = [f["spans"][0]["answer"] if f["spans"] else "" for f in scores.found]
    expected = squad_metrics(dict(zip((ex.id for ex in data.examples), spans)), data)
    for key in ("f1", "HasAns_f1", "NoAns_f1", "exact_match"):
        assert seen["--null-threshold none"][key] == pytest.approx(expected[key])
    assert sum(map(bool, spans)) > len(spans) / 2
    assert seen["--null-threshold none"]["null_threshold"] is None
    assert seen["--null-threshold 1e9"]["f1"] == pytest.approx(seen["--null-threshold none"]["f1"])
    assert seen["--null-threshold=-1e9"]["NoAns_f1"] == 100.0  # "" everywhere
    assert seen["--null-threshold=-1e9"]["HasAns_f1"] == 0.0
    assert cli_main(["predict", "--model", result["model"], "--data", str(held), "--output",
                     str(tmp_path / "p.csv"), "--null-threshold", "-1000000"]) == 0
    with open(tmp_path / "p.csv", encoding="utf-8") as f:
        assert {r["prediction"] for r in csv.DictReader(f)} == {""}

    predictor = Predictor(model)
    ex = data.examples
    by_model = predictor.answer([e.question for e in ex], [e.context for e in ex])
    assert [a["answer"] for a in by_model] == [scores[e.id] for e in ex]
    spans = predictor.answer([e.question for e in ex], [e.context for e in ex],
                             null_threshold=None)
    assert [bool(a["answer"]) for a in spans] == [bool(f["spans"]) for f in scores.found]
    with pytest.raises(ValueError, match="null_threshold must be 'model', a finite number"):
        predictor.answer(ex[0].question, ex[0].context, null_threshold="auto")

    # a validation set of answerable questions only: nothing to tune on, 0.0 stays
    answerable = tmp_path / "answerable.json"
    answerable.write_text(json.dumps({"version": "v2.0", "data": [
        {"title": a["title"], "paragraphs": [dict(p, qas=[q for q in p["qas"] if q["answers"]])
                                             for p in a["paragraphs"]]}
        for a in json.loads(held.read_text())["data"]]}))
    events = []
    again = run_finetune(config(tmp_path, tiny_model, task="qa", format="squad",
                                train=str(train), validation=str(answerable), max_length=48,
                                doc_stride=16, epochs=1, learning_rate=3e-3,
                                output=str(tmp_path / "run2")), events.append)
    assert load_model(Path(again["model"])).head["null_threshold"] == 0.0
    assert again["metrics"]["null_threshold"] == 0.0 and "best_f1" not in again["metrics"]
    assert any("null threshold 0: the validation set has no unanswerable questions"
               in e.get("text", "") for e in events)


@pytest.mark.backend_neutral
def test_null_threshold_options_are_checked(capsys):
    from bertdesk.cli import _finetune_config, build_parser

    base = ["finetune", "--task", "qa", "--train", "t.json", "--output", "out"]
    assert _finetune_config(build_parser().parse_args(base)).null_threshold == "auto"
    assert _finetune_config(build_parser().parse_args(
        base + ["--null-threshold", "-1.5"])).null_threshold == -1.5
    for argv in (base + ["--null-threshold", "none"], base + ["--null-threshold", "inf"],
                 ["evaluate", "--model", "m", "--data", "d", "--null-threshold", "auto"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        assert "--null-threshold: expected a number or" in capsys.readouterr().err
    from types import SimpleNamespace

    from bertdesk.cli import _apply_null_threshold

    args = build_parser().parse_args(["evaluate", "--model", "runs/x/model", "--data", "d",
                                      "--null-threshold", "0"])
    with pytest.raises(DataError, match="runs/x/model: --null-threshold applies to extractive "
                                        "QA models; this one is a classify model"):
        _apply_null_threshold(SimpleNamespace(task="classify", head={}), args)
    qa = SimpleNamespace(task="qa", head={"null_threshold": None})
    _apply_null_threshold(qa, args)
    assert qa.head["null_threshold"] == 0.0

    from bertdesk.data.squad import QAData, QAExample
    from bertdesk.training.tasks import get_task

    v1 = QAData([QAExample("q", "Who?", "Ana.", [{"text": "Ana", "answer_start": 0}])], "t.json")
    fixed = FinetuneConfig(train="t.json", output="o", task="qa", null_threshold=-1.5)
    with pytest.raises(DataError, match=r"t.json: --null-threshold is for SQuAD v2 data"):
        get_task("qa").make_head(v1, fixed)
    head = get_task("qa").make_head(QAData(v1.examples, "t.json", "v2.0"), fixed)
    assert (head["null_threshold"], head["null_threshold_from"]) == (-1.5, "given")
    for bad in (True, "high", float("nan")):
        with pytest.raises(DataError, match="--null-threshold: expected auto or a finite"):
            get_task("qa").make_head(v1, FinetuneConfig(train="t", output="o", task="qa",
                                                        null_threshold=bad))
    with pytest.raises(DataError, match="--null-threshold is for extractive QA .* this is a "
                                        "classify run"):
        run_finetune(FinetuneConfig(train="t.csv", output="o", null_threshold=0.5))
    assert get_task("qa").make_head(v1, FinetuneConfig(train="t", output="o", task="qa"))[
        "null_threshold"] is None


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="TensorFlow's traced steps and tf.data")
def test_tensorflow_traces_the_step_without_creating_variables(tmp_path, tiny_model,
                                                                monkeypatch):
    """The optimizer's slots exist before the first step: a variable made
    while TensorFlow traces a step makes it trace that step twice. The
    batches' tf.data pipeline has no autotuning thread, whose waking held
    up the end of an epoch by up to 42 s."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import core

    from bertdesk.data import batching

    made_in_trace = []
    initialize = core.Variable._initialize

    def recording(variable, value):
        if tf.inside_function():
            made_in_trace.append(variable.path)
        return initialize(variable, value)

    monkeypatch.setattr(core.Variable, "_initialize", recording)
    pipelines = []
    fit_input = batching.fit_input
    monkeypatch.setattr(batching, "fit_input",
                        lambda ds: pipelines.append(fit_input(ds)) or pipelines[-1])
    result = run_finetune(config(tmp_path, tiny_model))
    assert result["steps"] > 0 and len(pipelines) == 1
    assert made_in_trace == []
    assert pipelines[0].options().autotune.enabled is False


@pytest.mark.backend_neutral
def test_cli_pad_to_multiple_reaches_the_config(capsys):
    from bertdesk.cli import _finetune_config, build_parser

    base = ["finetune", "--train", "t.csv", "--model", "tiny", "--output", "out"]
    args = build_parser().parse_args(base + ["--pad-to-multiple", "32"])
    assert _finetune_config(args).pad_to_multiple == 32
    assert _finetune_config(build_parser().parse_args(base)).pad_to_multiple is None
    for bad in ("0", "-8", "eight"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(base + ["--pad-to-multiple", bad])
        assert (f"--pad-to-multiple: expected a positive whole number, got '{bad}'"
                in capsys.readouterr().err)


@pytest.mark.backend_neutral
def test_cli_max_shapes_reaches_the_config(capsys):
    from bertdesk.cli import _finetune_config, build_parser

    base = ["finetune", "--train", "t.csv", "--model", "tiny", "--output", "out"]
    assert _finetune_config(build_parser().parse_args(base)).max_shapes is None
    for given in ("0", "5"):
        args = build_parser().parse_args(base + ["--max-shapes", given])
        assert _finetune_config(args).max_shapes == int(given)
    for bad in ("-1", "many"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(base + ["--max-shapes", bad])
        assert (f"--max-shapes: expected a whole number >= 0, got '{bad}'"
                in capsys.readouterr().err)


def test_finetune_refuses_a_negative_shape_count(tmp_path, tiny_model):
    with pytest.raises(DataError, match="max_shapes: expected a whole number >= 1, or 0"):
        run_finetune(config(tmp_path, tiny_model, max_shapes=-2))


def test_fine_tuning_compiles_its_steps_on_jax_unless_told():
    """--jit-compile auto compiles on JAX only; on and off are kept (the
    step's choice sets the batches' lengths: multiples of 8, at most 8 of
    them, compiled; as they come eager)."""
    from bertdesk.training.finetune import compile_steps

    assert compile_steps("auto") == (keras.backend.backend() == "jax")
    assert compile_steps("on") is True and compile_steps("off") is False


def test_finetune_accumulates_gradients(tmp_path, tiny_model, capsys):
    """`gradient_accumulation=3` on 5 batches an epoch (86 examples, batch
    20): an update from 3 batches, then one from the 2 left, each epoch; the
    schedule spans those 4 updates, the checkpoint counts them with nothing
    left waiting, and a resume must keep the setting."""
    events = []
    cfg = config(tmp_path, tiny_model, epochs=2, batch_size=20, gradient_accumulation=3,
                 warmup_ratio=0.0)
    result = run_finetune(cfg, events.append)
    batches = [e for e in events if e["event"] == "train_begin"][0]["steps_per_epoch"]
    assert batches == 5 and result["steps"] == 2 * 2  # ceil(5 / 3) updates an epoch
    rates = [e["learning_rate"] for e in events if e["event"] == "step"]
    # each batch reports the latest update's rate (4 updates, no warmup: 1e-3 / 4 less
    # each), the first update's before it is made (not the schedule at -1: 1.25e-3)
    assert rates == pytest.approx([1e-3] * 5 + [7.5e-4] * 2 + [5e-4] * 3)
    assert any("one update every 3 batches of 20 (60 examples; an epoch's last update "
               "takes the 2 left): 4 updates in all" in e.get("text", "") for e in events)
    # the checkpoint after epoch 1 (a finished run keeps none)
    cfg.output = str(tmp_path / "stopped")
    stop_in_epoch_2(cfg)
    model = checkpoint_model(tmp_path / "stopped")
    assert model.optimizer.gradient_accumulation_steps == 3
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2
    accumulators = model.optimizer._accumulated_gradients
    assert not any(np.any(keras.ops.convert_to_numpy(a)) for a in accumulators)  # all applied
    assert model.optimizer._learning_rate.total_steps == 4

    cfg.resume, cfg.gradient_accumulation = True, 2
    with pytest.raises(DataError, match=r"started with --gradient-accumulation 3; resume it "
                                        r"with the same \(got 2\)"):
        run_finetune(cfg)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DataError, match="--gradient-accumulation: expected a whole number"):
            run_finetune(config(tmp_path, tiny_model, output=str(tmp_path / "x"),
                                gradient_accumulation=bad))

    from bertdesk.cli import _finetune_config, build_parser

    base = ["finetune", "--train", "t.csv", "--model", "tiny", "--output", "out"]
    args = build_parser().parse_args(base + ["--gradient-accumulation", "4"])
    assert _finetune_config(args).gradient_accumulation == 4
    assert _finetune_config(build_parser().parse_args(base)).gradient_accumulation == 1
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--gradient-accumulation", "0"])
    assert "--gradient-accumulation: expected a positive whole number" in capsys.readouterr().err


def test_class_weighted_crossentropy_weighs_each_example_by_its_label():
    from bertdesk.tasks.class_weighted_crossentropy import (ClassWeightedCrossentropy,
                                                            balanced_class_weights)

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3)).astype("float32")
    y = np.array([0, 2, 1, 1, 0, 2], "int32")
    weights = np.array([0.5, 2.0, 3.0])
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    per_example = -log_p[np.arange(6), y] * weights[y]
    loss = ClassWeightedCrossentropy(weights.tolist())
    assert float(keras.ops.convert_to_numpy(loss(y, logits))) == pytest.approx(
        per_example.mean(), rel=1e-5)
    mask = np.array([1, 1, 0, 1, 1, 0], "float32")  # padding rows: sample weight 0
    assert float(keras.ops.convert_to_numpy(loss(y[:, None], logits, sample_weight=mask))) == (
        pytest.approx((per_example * mask).sum() / 6, rel=1e-5))
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, ClassWeightedCrossentropy) and again.class_weights == [0.5, 2, 3]
    for bad in ([], [1.0, 0.0], [1.0, float("nan")], [-1.0, 1.0]):
        with pytest.raises(ValueError, match="class_weights must be positive numbers"):
            ClassWeightedCrossentropy(bad)
    # scikit-learn's "balanced": n / (classes x count), averaging 1 over the examples
    assert balanced_class_weights([0, 0, 0, 1, 2, 2], 3) == pytest.approx([2 / 3, 2, 1])
    with pytest.raises(ValueError, match=r"no example of classes \[1\]"):
        balanced_class_weights([0, 2], 3)


def test_positive_weighted_binary_crossentropy_is_pytorchs_pos_weight():
    """Against the formula -(w y log s + (1 - y) log(1 - s)) averaged over
    labels, Keras' binary cross-entropy where every weight is 1, and large
    logits (the stable form); the balanced weights are each label's
    negatives over its positives."""
    from bertdesk.tasks.class_weighted_crossentropy import (PositiveWeightedBinaryCrossentropy,
                                                            balanced_positive_weights)

    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3, size=(5, 3)).astype("float32")
    logits[0, 0], logits[1, 1] = 60.0, -60.0  # log(sigmoid) would underflow to -inf
    y = (rng.random((5, 3)) < 0.4).astype("float32")
    y[0, 0], y[1, 1] = 0.0, 1.0
    w = np.array([3.0, 0.5, 1.0])
    log_s = -np.logaddexp(0, -logits.astype(np.float64))
    log_not_s = -np.logaddexp(0, logits.astype(np.float64))
    expected = -(w * y * log_s + (1 - y) * log_not_s).mean(1).mean()
    loss = PositiveWeightedBinaryCrossentropy(w.tolist())
    assert float(keras.ops.convert_to_numpy(loss(y, logits))) == pytest.approx(expected, rel=1e-5)
    ones = PositiveWeightedBinaryCrossentropy([1.0, 1.0, 1.0])
    small = logits.clip(-10, 10)
    assert float(keras.ops.convert_to_numpy(ones(y, small))) == pytest.approx(float(
        keras.ops.convert_to_numpy(keras.losses.BinaryCrossentropy(from_logits=True)(y, small))),
        rel=1e-5)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert again.positive_weights == [3.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="positive_weights must be positive numbers"):
        PositiveWeightedBinaryCrossentropy([1.0, 0.0])
    targets = [[1, 0, 1], [0, 0, 1], [0, 1, 1], [0, 0, 1]]
    assert balanced_positive_weights(targets) == pytest.approx([3.0, 3.0, 1.0])  # c: always on
    with pytest.raises(ValueError, match=r"no example of labels \[1\]"):
        balanced_positive_weights([[1, 0], [1, 0]])


def test_class_weights_shift_training_toward_the_weighted_label(tmp_path, tiny_model):
    """On 80 negative and 16 positive sentences, balanced weights (0.6 and
    3.0, from the counts) make the model predict positive more often on a
    balanced validation set than the same run without them; the weights
    are saved with the model and said at the start, and a resumed run
    trains with the same loss."""
    with open(ASSETS / "sentiment_en.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    negative = [r for r in rows if r[1] == "negative"]
    positive = [r for r in rows if r[1] == "positive"]
    for name, part in (("imbalanced.csv", negative[:80] + positive[:16]),
                       ("held.csv", negative[100:140] + positive[100:140])):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["text", "label"]] + part)
    positive_rate = {}
    for weighting in (None, "balanced"):
        events = []
        out = tmp_path / f"run_{weighting}"
        run_finetune(config(tmp_path, tiny_model, train=str(tmp_path / "imbalanced.csv"),
                            validation=str(tmp_path / "held.csv"), output=str(out), epochs=3,
                            learning_rate=1e-2,
                            class_weight=weighting), events.append)
        preds = list(csv.DictReader(open(out / "validation_predictions.csv", encoding="utf-8")))
        positive_rate[weighting] = np.mean([float(r["p(positive)"]) for r in preds])
        head = json.loads((out / "model" / "bertdesk.json").read_text())["head"]
        said = " ".join(e.get("text", "") for e in events if e["event"] == "message")
        if weighting:
            assert head["class_weights"] == pytest.approx([96 / 160, 96 / 32])
            assert "class weights: negative 0.6, positive 3" in said
            # a run stopped in epoch 2 (a finished run keeps no checkpoint)
            stopped = stop_in_epoch_2(config(
                tmp_path, tiny_model, train=str(tmp_path / "imbalanced.csv"), epochs=2,
                validation=str(tmp_path / "held.csv"), output=str(tmp_path / "stopped"),
                class_weight=weighting))
            resumed = checkpoint_model(tmp_path / "stopped")
            losses = resumed.loss if isinstance(resumed.loss, dict) else {"logits": resumed.loss}
            assert type(losses["logits"]).__name__ == "ClassWeightedCrossentropy"
            assert losses["logits"].class_weights == head["class_weights"]
            stopped.class_weight, stopped.resume = None, True
            with pytest.raises(DataError, match=r"started with class weights \[0\.6, 3\.0\]; "
                                                r"resume it with the same --class-weight"):
                run_finetune(stopped)
        else:
            assert "class_weights" not in head and "class weights" not in said
    assert positive_rate["balanced"] > positive_rate[None] + 0.05, positive_rate


@pytest.mark.parametrize("overrides,message", [
    (dict(class_weight={"neutral": 2}), r"'neutral' not among the training data's labels "
                                        r"\(negative, positive\)"),
    (dict(class_weight={"positive": 0}), "the weight of 'positive' must be a positive number"),
    (dict(class_weight="equal"), "expected 'balanced' or label=weight pairs"),
])
def test_class_weight_errors(tmp_path, tiny_model, overrides, message):
    cfg = config(tmp_path, tiny_model, **{"class_weight": "balanced", **overrides})
    with pytest.raises(DataError, match=message):
        run_finetune(cfg)


def test_class_weight_options(tmp_path, tiny_model, capsys):
    from bertdesk.cli import _finetune_config, build_parser

    base = ["finetune", "--train", "t.csv", "--model", "tiny", "--output", "out"]

    def parsed(value):
        return _finetune_config(build_parser().parse_args(base + ["--class-weight", value]))

    assert parsed("balanced").class_weight == "balanced"
    assert parsed("none").class_weight is None
    assert parsed("negative=1,positive=2.5").class_weight == {"negative": 1.0, "positive": 2.5}
    assert parsed('{"a,b": 2, "c": 1}').class_weight == {"a,b": 2, "c": 1}
    assert parsed("x=y=3").class_weight == {"x=y": 3.0}  # the last '=' splits
    assert parsed("negative=1, positive=2").class_weight == {"negative": 1.0, "positive": 2.0}
    for bad in ("positive", "positive=high", "[1, 2]", "=2"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(base + ["--class-weight", bad])
        assert "expected balanced, none, LABEL=WEIGHT,... or a JSON object" in (
            capsys.readouterr().err)
    ner = tmp_path / "t.conll"
    ner.write_text("Alice B-PER\nruns O\n\n")
    with pytest.raises(DataError, match="--class-weight is for text classification"):
        run_finetune(config(tmp_path, tiny_model, task="ner", train=str(ner),
                            class_weight="balanced"))


@pytest.mark.parametrize("problem_type", ["single_label", "multi_label"])
def test_a_class_weighted_run_resumes_in_a_new_process(tmp_path, tiny_model, problem_type):
    """The checkpoint's compiled loss is one of bertdesk's: a new process
    that resumes the run (the command line's `--resume`) must find it."""
    import subprocess
    import sys

    weights = {"negative": 1, "positive": 2}
    if problem_type == "multi_label":
        weights = {"positive": 2}
    cfg = stop_in_epoch_2(config(tmp_path, tiny_model, epochs=2, problem_type=problem_type,
                                 class_weight=weights))
    script = (
        "import json, sys\n"
        "from bertdesk.training.finetune import FinetuneConfig, run_finetune\n"
        "cfg = FinetuneConfig.from_dict(json.loads(sys.argv[1]))\n"
        "print(json.dumps({'epochs': len(run_finetune(cfg)['history'])}))\n")
    resumed = {**asdict(cfg), "resume": True}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(resumed)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ASSETS.parent)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"epochs": 2}


def test_a_resumed_run_trains_as_the_uninterrupted_one(tmp_path, tiny_model):
    """Stopped after its first epoch and resumed, a run's second epoch is the
    uninterrupted run's: the same dropout masks (the generators' states
    travel with the checkpoint), schedule and optimizer state, so the same
    training loss and validation numbers."""
    def epoch_events(cfg, stop=False):
        events = []

        def sink(event):
            events.append(event)
            if stop and event["event"] == "step" and event["epoch"] == 2:
                raise Interrupt()

        if stop:
            with pytest.raises(Interrupt):
                run_finetune(cfg, sink)
            cfg.resume, events[:] = True, []
            run_finetune(cfg, events.append)
        else:
            run_finetune(cfg, sink)
        return [e for e in events if e["event"] == "epoch" and e["epoch"] == 2]

    whole = epoch_events(config(tmp_path, tiny_model, epochs=2, output=str(tmp_path / "a")))
    resumed = epoch_events(config(tmp_path, tiny_model, epochs=2, output=str(tmp_path / "b")),
                           stop=True)
    assert len(whole) == len(resumed) == 1
    assert resumed[0]["loss"] == whole[0]["loss"]
    assert resumed[0]["validation"] == whole[0]["validation"]


@pytest.mark.parametrize("change", [{"epochs": 3}, {"batch_size": 8}, {"learning_rate": 5e-2}])
def test_resuming_with_another_plan_is_refused(tmp_path, tiny_model, change):
    """The checkpoint's optimizer carries the run's schedule: other --epochs,
    --batch-size or --learning-rate would be ignored (updates past its end
    at a learning rate of 0), so a resume with them is refused."""
    cfg = interrupted_in_epoch_2(tmp_path, tiny_model)
    changed = replace(cfg, resume=True, **change)
    with pytest.raises(DataError, match="run was (started with --learning-rate|planned as "
                                        r"\d+ updates)"):
        run_finetune(changed)
    assert run_finetune(replace(cfg, resume=True))["history"]  # the same plan resumes


def test_warmup_steps_round_up_as_transformers_does():
    from bertdesk.training.optimization import bert_adamw

    for total, ratio in ((5, 0.1), (25, 0.1), (45, 0.1), (100, 0.06), (4, 0.0)):
        schedule = bert_adamw(1e-3, total, ratio)._learning_rate
        assert schedule.warmup_steps == math.ceil(total * ratio)  # TrainingArguments' rule


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's sparse "
                    "embedding gradients")
@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_clipping_reads_an_embedding_gradients_summed_rows(optimizer):
    """TensorFlow gives an embedding lookup's gradient as a row per token
    (`IndexedSlices`, rows repeated): the global norm is the summed
    gradient's, so the update is the same as from the dense gradient."""
    import tensorflow as tf

    from bertdesk.training.optimization import BertAdamW, BertLamb

    def updated(gradient):
        variable = keras.Variable(np.ones((4, 3), "float32"), name="table")
        # (a large epsilon: Adam's first step is otherwise the gradient's sign)
        make = {"adamw": lambda: BertAdamW(1e-2, global_clipnorm=1.0, epsilon=1.0),
                "lamb": lambda: BertLamb(1e-2, global_clipnorm=1.0, epsilon=1.0,
                                         weight_decay=0.0)}[optimizer]
        opt = make()
        opt.build([variable])
        opt.apply([gradient], [variable])
        return keras.ops.convert_to_numpy(variable)

    rows = tf.constant([[0.6, 0.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.9, 0.3]])
    sparse = tf.IndexedSlices(rows, tf.constant([0, 0, 2]), tf.constant([4, 3]))
    np.testing.assert_allclose(updated(sparse), updated(tf.convert_to_tensor(sparse)),
                               rtol=0, atol=1e-7)
