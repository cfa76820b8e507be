"""Fine-tuned models out to transformers and back: `bertdesk convert --to hf`
on a fine-tuned folder writes the transformers task model (head, labels,
problem type) whose logits equal bertdesk's; transformers' pipelines read it;
`load_model` / `Predictor` read transformers task folders."""

import json

import keras
import numpy as np
import pytest

import bertdesk
from bertdesk.cli import main as cli_main
from bertdesk.data.ner import to_bio
from bertdesk.io.errors import CheckpointError
from bertdesk.predictor import Predictor
from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer
from bertdesk.tasks.bert_text_classifier import BertTextClassifier
from bertdesk.tasks.bert_token_classifier import BertTokenClassifier
from bertdesk.tasks.saving import TASK_MODEL_FILES, load_model, save_task_model

TEXTS = ["A gripping plot, and fine acting.", "Dull.", "Ana moved to New York in May."]
CONTEXT = "Evenmoor lies on the river Tam, two days south of the hills."


@pytest.fixture(scope="module")
def tokenizer():
    return bertdesk.BertTokenizer.from_pretrained(bertdesk.bundled_checkpoint())


def task_model(kind, problem_type="single_label"):
    keras.utils.set_random_seed(3)
    backbone = bertdesk.BertBackbone(vocabulary_size=30522, num_layers=2, hidden_dim=16,
                                     num_heads=2, intermediate_dim=32, max_sequence_length=64)
    if kind == "qa":
        model = BertQuestionAnswerer(backbone)
        head = {"problem_type": "extractive_qa", "num_classes": 2, "labels": None,
                "version": "2.0", "null_threshold": 0.5, "doc_stride": 16,
                "max_answer_length": 7}
    elif kind == "ner":
        labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
        model = BertTokenClassifier(backbone, num_classes=len(labels))
        head = {"num_classes": len(labels), "labels": labels}
    else:
        n = 1 if problem_type == "regression" else 3
        model = BertTextClassifier(backbone, num_classes=n, problem_type=problem_type)
        head = {"problem_type": problem_type, "num_classes": n,
                "labels": None if n == 1 else ["neg", "neu", "pos"]}
    # every weight away from its initial value (zero biases, unit LayerNorm),
    # so a converter that drops or misplaces one shows (the head's bias too)
    rng = np.random.default_rng(3)
    model.set_weights([w + 0.1 * rng.standard_normal(w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    kernel = model.classifier.kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel) * 30)  # classes far apart
    return model, head


def exported(tmp_path, tokenizer, kind, problem_type="single_label", original=None):
    """The model saved by bertdesk and converted by the command line; the
    model itself in `original` (a list) when given: the reference, since
    saving, loading and converting may share one mistake (a head bias
    dropped on the way out, or never read, gives a folder and an export
    that agree with each other)."""
    model, head = task_model(kind, problem_type)
    folder = tmp_path / f"{kind}-{problem_type}"
    save_task_model(model, folder, tokenizer, kind, head, {"max_length": 48, "epochs": 3})
    hf = tmp_path / f"{kind}-{problem_type}-hf"
    assert cli_main(["convert", str(folder), str(hf), "--to", "hf"]) == 0
    if original is not None:
        original.append(model)
    return folder, hf


def logits_of(model, batch):
    """bertdesk's logits (a classifier's and tagger's are a dict's)."""
    out = model.predict_on_batch({k: batch[k] for k in ("token_ids", "segment_ids",
                                                         "padding_mask")})
    return np.asarray(out["logits"] if isinstance(out, dict) else out)


def same_words(a, b):
    """Tagged words alike: words, offsets and tags equal, scores to 1e-5."""
    return [[dict(w, score=pytest.approx(w["score"], abs=1e-5)) for w in words]
            for words in b] == a


def torch_inputs(batch):
    import torch

    return {"input_ids": torch.tensor(batch["token_ids"], dtype=torch.long),
            "token_type_ids": torch.tensor(batch["segment_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(batch["padding_mask"], dtype=torch.long)}


@pytest.mark.parametrize("problem_type", ["single_label", "multi_label", "regression"])
def test_classifier_export_is_transformers_sequence_classifier(tmp_path, tokenizer,
                                                               problem_type):
    import torch
    from transformers import AutoModelForSequenceClassification

    original = []
    folder, hf = exported(tmp_path, tokenizer, "classify", problem_type, original)
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["problem_type"] == {"single_label": "single_label_classification",
                                      "multi_label": "multi_label_classification",
                                      "regression": "regression"}[problem_type]
    theirs = AutoModelForSequenceClassification.from_pretrained(
        str(hf), attn_implementation="eager").eval()
    ours = load_model(folder)
    batch = tokenizer(TEXTS, max_length=48, padding="longest")
    with torch.no_grad():
        expected = theirs(**torch_inputs(batch)).logits.numpy()
    np.testing.assert_allclose(logits_of(original[0], batch), expected, atol=2e-5)
    np.testing.assert_allclose(logits_of(ours.model, batch), expected, atol=2e-5)
    if problem_type != "regression":
        assert theirs.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    # and back: the export loads as a bertdesk model that answers as the original
    back = Predictor.load(hf)
    assert back.model.head == ours.head and back.max_length == 48
    for a, b in zip(back(TEXTS), Predictor(ours)(TEXTS)):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == (b[key] if key in ("label", "labels")
                              else pytest.approx(b[key], abs=1e-5))


def test_transformers_pipelines_agree_with_the_predictor(tmp_path, tokenizer):
    from transformers import pipeline

    folder, hf = exported(tmp_path, tokenizer, "classify")
    theirs = pipeline("text-classification", model=str(hf), tokenizer=str(hf), top_k=None)
    ours = Predictor.load(folder)
    for answers, mine in zip(theirs(TEXTS), ours(TEXTS)):
        assert {a["label"]: a["score"] for a in answers} == pytest.approx(mine["scores"],
                                                                        abs=1e-5)

    folder, hf = exported(tmp_path, tokenizer, "ner")
    theirs = pipeline("token-classification", model=str(hf), tokenizer=str(hf))
    ours = Predictor.load(folder)
    for tokens, words in zip(theirs(TEXTS), ours.tag(TEXTS)):
        # transformers tags every word piece; each word's first piece is its tag here
        firsts = {t["start"]: t for t in tokens}
        for word in words:
            if word["tag"] == "O":
                assert word["start"] not in firsts
            else:
                assert firsts[word["start"]]["entity"] == word["tag"]
                assert firsts[word["start"]]["score"] == pytest.approx(word["score"], abs=1e-5)


def test_token_and_span_models_export_with_their_heads(tmp_path, tokenizer, recwarn):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification

    original = []
    folder, hf = exported(tmp_path, tokenizer, "ner", original=original)
    with safe_open(str(hf / "model.safetensors"), framework="np") as f:
        names = set(f.keys())
    # transformers' token and span classes have no pooler: none written, none missed
    assert "classifier.weight" in names and not any("pooler" in n for n in names)
    theirs = AutoModelForTokenClassification.from_pretrained(str(hf)).eval()
    assert theirs.config.id2label[3] == "B-PER"
    batch = tokenizer(TEXTS, max_length=48, padding="longest")
    with torch.no_grad():
        expected = theirs(**torch_inputs(batch)).logits.numpy()
    mask = batch["padding_mask"].astype(bool)
    for model in (original[0], load_model(folder).model):
        got = logits_of(model, batch)
        np.testing.assert_allclose(got[mask], expected[mask], atol=2e-5)
    assert same_words(Predictor.load(hf).tag(TEXTS), Predictor.load(folder).tag(TEXTS))

    folder, hf = exported(tmp_path, tokenizer, "qa", original=original)
    theirs = AutoModelForQuestionAnswering.from_pretrained(str(hf)).eval()
    batch = tokenizer(["Where is Evenmoor?"], [CONTEXT], max_length=48, padding="longest")
    with torch.no_grad():
        out = theirs(**torch_inputs(batch))
    for model in (original[1], load_model(folder).model):
        got = logits_of(model, batch)
        np.testing.assert_allclose(got[..., 0], out.start_logits.numpy(), atol=2e-5)
        np.testing.assert_allclose(got[..., 1], out.end_logits.numpy(), atol=2e-5)
    back = Predictor.load(hf)
    assert back.model.head["null_threshold"] == 0.5  # SQuAD 2.0 settings kept
    assert not [w for w in recwarn if "pooler" in str(w.message)]
    mine = Predictor.load(folder).answer("Where is Evenmoor?", CONTEXT)
    assert back.answer("Where is Evenmoor?", CONTEXT) == dict(
        mine, score=pytest.approx(mine["score"], abs=1e-6))


def test_transformers_task_folders_without_bertdesk_entries(tmp_path, tokenizer):
    """A folder transformers wrote: labels from id2label, the problem type,
    pipelines' lengths."""
    _, hf = exported(tmp_path, tokenizer, "classify", "multi_label")
    config = json.loads((hf / "config.json").read_text())
    del config["bertdesk"]
    (hf / "config.json").write_text(json.dumps(config))
    model = load_model(hf)
    assert model.task == "classify" and model.labels == ["neg", "neu", "pos"]
    assert model.head["problem_type"] == "multi_label" and model.max_length == 64

    config["architectures"] = ["BertModel"]
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: architectures \['BertModel'\] "
                                              "holds no fine-tuned task"):
        load_model(hf)
    config.update(architectures=["BertForSequenceClassification"], problem_type="ranking")
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="problem_type 'ranking'; expected one of"):
        load_model(hf)


def test_an_export_reads_data_as_the_model_was_trained_to(tmp_path, tokenizer, capsys):
    # the columns and the label separator travel in config.json: evaluate on
    # the transformers export reads the training's table without options
    model, head = task_model("classify", "multi_label")
    folder, hf = tmp_path / "ml", tmp_path / "ml-hf"
    save_task_model(model, folder, tokenizer, "classify", head,
                    {"max_length": 48, "text_column": "sentence", "label_column": "tags",
                     "label_separator": ";"})
    # what --resume takes as a run's own model/ (bertdesk.training.finetune)
    assert {p.name for p in folder.iterdir()} == TASK_MODEL_FILES
    assert cli_main(["convert", str(folder), str(hf), "--to", "hf"]) == 0
    data = tmp_path / "val.csv"
    data.write_text("sentence,tags\nA gripping plot.,neg;pos\nDull.,neu\n")
    metrics = tmp_path / "m.json"
    assert cli_main(["evaluate", "--model", str(hf), "--data", str(data),
                     "--metrics-out", str(metrics)]) == 0, capsys.readouterr().err
    per_class = json.loads(metrics.read_text())["per_class"]
    assert [(c["label"], c["support"]) for c in per_class] == [("neg", 1), ("neu", 1), ("pos", 1)]
    # and a separator given now takes precedence
    data.write_text("sentence,tags\nA gripping plot.,neg|pos\nDull.,neu\n")
    assert cli_main(["evaluate", "--model", str(hf), "--data", str(data)]) == 2
    assert "'neg|pos'" in capsys.readouterr().err
    assert cli_main(["evaluate", "--model", str(hf), "--data", str(data),
                     "--label-separator", "|", "--metrics-out", str(metrics)]) == 0
    # predictions join the labels with the data's separator (they were joined with ",")
    out = tmp_path / "p.jsonl"
    assert cli_main(["predict", "--model", str(hf), "--data", str(data),
                     "--label-separator", "|", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["gold"] == "neg|pos" and rows[1]["gold"] == "neu"
    assert "," not in "".join(r["prediction"] for r in rows)
    assert all(set(r["prediction"].split("|")) <= {"", "neg", "neu", "pos"} for r in rows)


def test_predict_reads_untagged_words_and_writes_every_labels_probability(tmp_path, tokenizer,
                                                                          capsys):
    import pandas as pd

    model, head = task_model("ner")
    ner = tmp_path / "ner"
    save_task_model(model, ner, tokenizer, "ner", head, {"max_length": 48})
    words = tmp_path / "words.conll"  # one word per line, no tags: what is to be tagged
    words.write_text("-DOCSTART-\n\nAna\nmoved\nto\nU.S.\n\nDull\n.\n")
    out = tmp_path / "tags.csv"
    assert cli_main(["predict", "--model", str(ner), "--data", str(words),
                     "--output", str(out)]) == 0, capsys.readouterr().err
    rows = pd.read_csv(out, keep_default_na=False)
    assert rows.columns.tolist() == ["line", "words", "prediction", "entities"]
    assert rows["words"].tolist() == ["Ana moved to U.S.", "Dull ."]  # U.S. one word
    assert rows["line"].tolist() == [3, 8]
    expected = Predictor(load_model(ner))
    # the model's tags as they are scored: IOB2 (an I- that opens an entity is its B-)
    assert [p.split() for p in rows["prediction"]] == [
        to_bio([w["tag"] for w in sentence]) for sentence in expected.tag(
            [["Ana", "moved", "to", "U.S."], ["Dull", "."]], is_split_into_words=True)]
    words.write_text("Ana\nmoved NNP\n")
    assert cli_main(["predict", "--model", str(ner), "--data", str(words),
                     "--output", str(out)]) == 2
    assert "line 2: 2 fields, expected one word per line" in capsys.readouterr().err
    with pytest.raises(Exception, match="expected 'word ... TAG'"):  # evaluate needs the tags
        from bertdesk.training.tasks import get_task

        words.write_text("Ana\nmoved\n")
        get_task("ner").load(words, {})
    # a multi-label model's rows carry each label's probability, as single-label ones do
    model, head = task_model("classify", "multi_label")
    ml = tmp_path / "ml"
    save_task_model(model, ml, tokenizer, "classify", head, {"max_length": 48})
    texts = tmp_path / "t.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(texts, index=False)
    assert cli_main(["predict", "--model", str(ml), "--data", str(texts),
                     "--output", str(out)]) == 0
    rows = pd.read_csv(out)
    probabilities = Predictor(load_model(ml))(TEXTS)
    for label in ("neg", "neu", "pos"):
        np.testing.assert_allclose(rows[f"p({label})"],
                                   [p["scores"][label] for p in probabilities], atol=1e-5)


@pytest.mark.parametrize("kind", ["classify", "ner", "qa"])
def test_converting_a_transformers_task_folder_keeps_its_task(tmp_path, tokenizer, kind):
    """`convert` of a folder transformers wrote (a `BertFor...` task model,
    no bertdesk entries) keeps head and labels both ways; a pooler the
    folder lacked is not written (it was a random one)."""
    from safetensors import safe_open

    _, hf = exported(tmp_path, tokenizer, kind)
    config = json.loads((hf / "config.json").read_text())
    del config["bertdesk"]
    (hf / "config.json").write_text(json.dumps(config))
    batch = tokenizer(TEXTS[:2], TEXTS[1:], max_length=48, padding="longest")
    source = load_model(hf)
    expected = logits_of(source.model, batch)
    for to in ("hf", "bertdesk"):
        out = tmp_path / f"again-{to}"
        assert cli_main(["convert", str(hf), str(out), "--to", to]) == 0
        again = load_model(out)
        assert (again.task, again.labels) == (source.task, source.labels)
        np.testing.assert_allclose(logits_of(again.model, batch), expected, atol=1e-5)
        with safe_open(str(out / "model.safetensors"), framework="np") as f:
            names = set(f.keys())
        assert any(n.startswith(("classifier.", "qa_outputs.")) for n in names)
        assert any("pooler" in n for n in names) == (kind == "classify")
    hf_config = json.loads((tmp_path / "again-hf" / "config.json").read_text())
    assert hf_config["architectures"] == [config["architectures"][0]]
    assert hf_config.get("id2label") == config.get("id2label")
    for to in ("google", "keras_hub"):  # neither layout holds a task model: refused, not stripped
        assert cli_main(["convert", str(hf), str(tmp_path / to), "--to", to]) == 2
        assert not (tmp_path / to).exists()


def test_a_task_folder_of_another_kind_is_refused_not_stripped(tmp_path, tokenizer):
    _, hf = exported(tmp_path, tokenizer, "classify")
    config = json.loads((hf / "config.json").read_text())
    del config["bertdesk"]
    config["architectures"] = ["BertForMultipleChoice"]
    (hf / "config.json").write_text(json.dumps(config))
    assert cli_main(["convert", str(hf), str(tmp_path / "out"), "--to", "hf"]) == 2
    assert not (tmp_path / "out").exists()
