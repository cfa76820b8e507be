"""int8 inference (`bertdesk.quantize_int8`, `layers/int8_kernels.py`):
oneDNN's integer product on PyTorch's CPU gives Keras' int8 call's numbers;
a quantized model stays close to its float self on every backend, its
[CLS]-only last layer included; Predictor and the command line quantize on
request."""

import csv
import json
import os

import keras
import numpy as np
import pytest
from harness import to_np

import bertdesk
from bertdesk.cli import main as cli_main
from bertdesk.layers import int8_kernels
from bertdesk.layers.lean_backward import gelu
from bertdesk.models.bert_pretraining_model import BertPretrainingModel
from bertdesk.predictor import Predictor
from bertdesk.quantization import INPUT_RANGE, quantize_int8
from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer
from bertdesk.tasks.bert_text_classifier import BertTextClassifier
from bertdesk.tasks.bert_token_classifier import BertTokenClassifier
from bertdesk.tasks.saving import save_task_model

IS_TORCH = keras.backend.backend() == "torch"
VOCAB = 97
torch_only = pytest.mark.skipif(not IS_TORCH, reason="oneDNN's product is PyTorch's")


def _backbone(**kwargs):
    return bertdesk.BertBackbone(vocabulary_size=VOCAB, num_layers=2, hidden_dim=32,
                                 num_heads=2, intermediate_dim=64, **kwargs)


def _inputs(with_positions=False):
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(1, VOCAB, (3, 11)).astype("int32"),
         "segment_ids": np.array([[0] * 6 + [1] * 5] * 3, "int32"),
         "padding_mask": np.array([[1] * 11, [1] * 7 + [0] * 4, [1] * 3 + [0] * 8], "int32")}
    if with_positions:
        x["mask_positions"] = np.array([[1, 3], [2, 4], [0, 1]], "int32")
    return x


def _dense(units, activation=None, range_=INPUT_RANGE, inputs=24):
    """A built Dense with spread-out weights, quantized with inputs in
    [-range_, range_]."""
    from keras.quantizers import AbsMaxQuantizer, Int8QuantizationConfig

    layer = keras.layers.Dense(units, activation=activation)
    layer.build((None, inputs))
    rng = np.random.default_rng(3)
    layer.kernel.assign(rng.normal(size=(inputs, units)).astype("float32"))
    layer.bias.assign(rng.normal(size=units).astype("float32"))
    layer.quantize("int8", config=Int8QuantizationConfig(
        activation_quantizer=AbsMaxQuantizer(value_range=(-range_, range_))))
    return layer


def _rows(shape=(3, 5, 24)):
    rng = np.random.default_rng(4)
    x = rng.normal(size=shape).astype("float32")
    x[0, 0] *= 40  # rows of very different scales
    x[1, 1] = 0  # and one of zeros
    x[2, 2, 0] = -90  # one large entry: the rest of its row quantizes coarsely
    return x


def _without_fast_path(monkeypatch):
    monkeypatch.setattr(int8_kernels, "applies", lambda layer, x: False)


# === The integer product ===
@torch_only
@pytest.mark.parametrize("activation", [None, gelu])
def test_onednns_product_gives_keras_int8_call(activation):
    """The same integers as Keras' quantizer and exact integer sums: Keras'
    `quantized_call` to float rounding (an input off by one step, or 8-bit
    inputs summed with saturation, would be far outside this)."""
    import torch

    layer = _dense(40, activation)
    x = torch.from_numpy(_rows())
    with torch.no_grad():
        assert int8_kernels.applies(layer, x)
        fast = int8_kernels.int8_dense(layer, x, gelu=activation is gelu)
        expected = layer(x)  # Keras' own int8 call
    np.testing.assert_allclose(to_np(fast), to_np(expected), rtol=2e-6, atol=2e-5)
    assert tuple(fast.shape) == (3, 5, 40)
    empty = int8_kernels.int8_dense(layer, x[:0])
    assert tuple(empty.shape) == (0, 5, 40)


@torch_only
def test_8_bit_inputs_take_the_fast_path_only_where_the_cpu_has_vnni(monkeypatch):
    """Keras' default range (-127, 127) overflows AVX2's 16-bit pair sums:
    without VNNI the layer keeps Keras' call."""
    import torch

    layer = _dense(40, range_=127)
    x = torch.from_numpy(_rows())
    monkeypatch.setattr(int8_kernels, "_has_vnni", lambda: False)
    assert not int8_kernels.applies(layer, x)
    monkeypatch.setattr(int8_kernels, "_has_vnni", lambda: True)
    assert int8_kernels.applies(layer, x)
    seven_bit = _dense(40)
    assert int8_kernels.applies(seven_bit, x)
    assert not int8_kernels.applies(seven_bit, x.to(torch.bfloat16))
    assert not int8_kernels.applies(seven_bit, x.requires_grad_())  # autograd records
    with torch.no_grad():
        assert int8_kernels.applies(seven_bit, x)


@torch_only
def test_8_bit_inputs_on_a_vnni_cpu_give_keras_numbers():
    if not int8_kernels._has_vnni():
        pytest.skip("this CPU has no VNNI: 8-bit inputs keep Keras' call")
    import torch

    layer = _dense(40, range_=127)
    x = torch.from_numpy(_rows())
    with torch.no_grad():
        np.testing.assert_allclose(to_np(int8_kernels.int8_dense(layer, x)), to_np(layer(x)),
                                   rtol=2e-6, atol=2e-5)


@torch_only
def test_the_packed_kernel_follows_the_layers_weights():
    import torch

    layer = _dense(40)
    x = torch.from_numpy(_rows())
    with torch.no_grad():
        before = to_np(int8_kernels.int8_dense(layer, x))
        layer._kernel.assign(-keras.ops.convert_to_numpy(layer._kernel))
        after = to_np(int8_kernels.int8_dense(layer, x))
        np.testing.assert_allclose(after, to_np(layer(x)), rtol=2e-6, atol=2e-5)
    assert np.abs(after - before).max() > 1


# === Quantized models ===
MODELS = {
    "backbone": lambda bb: bb,
    "text_classifier": lambda bb: BertTextClassifier(bb, num_classes=3),
    "token_classifier": lambda bb: BertTokenClassifier(bb, num_classes=4),
    "question_answerer": BertQuestionAnswerer,
}


def _main_output(out):
    return to_np(out["sequence_output"] if "sequence_output" in out else
                 out.get("logits", out.get("start_logits")))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_quantized_model_stays_close_to_its_float_self(name):
    keras.utils.set_random_seed(5)
    model, x = MODELS[name](_backbone()), _inputs()
    real = x["padding_mask"].astype(bool)
    expected = _main_output(model.predict_on_batch(x))
    assert quantize_int8(model) is model
    for layer in model._flatten_layers():
        if isinstance(layer, (keras.layers.Dense, keras.layers.Embedding)):
            assert layer.quantization_mode == "int8", layer.path
    got = _main_output(model.predict_on_batch(x))
    if got.ndim == 3 or (got.ndim == 2 and got.shape == real.shape):
        got, expected = got[real], expected[real]  # real tokens
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 0.05 * scale
    assert np.abs(got - expected).max() > 0  # (quantized at all)


@pytest.mark.parametrize("quantize", ["bertdesk", "keras"])
def test_the_cls_only_last_layer_reads_quantized_kernels_as_such(quantize):
    """The classifier's last layer runs at [CLS] alone through the q/k/v
    kernel's column blocks; quantized, the kernel holds int8 values and
    scales, and reading it as weights put the output off by its own size."""
    keras.utils.set_random_seed(6)
    backbone, x = _backbone(), _inputs()
    if quantize == "bertdesk":
        quantize_int8(backbone)
    else:
        backbone.quantize("int8")
    full = to_np(backbone.predict_on_batch(x)["sequence_output"])[:, 0]
    cls_only = to_np(backbone.encode_positions(x))[:, 0]
    np.testing.assert_allclose(cls_only, full, atol=2e-5)


def test_a_tied_table_stays_float_and_quantizing_twice_is_refused():
    keras.utils.set_random_seed(8)
    model, x = BertPretrainingModel(_backbone()), _inputs(with_positions=True)
    expected = to_np(model.predict_on_batch(x)["mlm_logits"])
    quantize_int8(model)
    embeddings = model.backbone.embeddings
    assert embeddings.token_embedding.quantization_mode is None  # the head's matrix
    assert embeddings.position_embedding.quantization_mode == "int8"
    got = to_np(model.predict_on_batch(x)["mlm_logits"])
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int8(model)


def test_a_quantized_model_is_not_saved_as_weights(tmp_path):
    """Its int8 values and scales written as weights would be a checkpoint
    of garbage: saving is refused and nothing is written."""
    keras.utils.set_random_seed(10)
    model = BertTextClassifier(_backbone(), num_classes=2)
    quantize_int8(model)
    tokenizer = bertdesk.BertTokenizer.from_pretrained(bertdesk.bundled_checkpoint())
    with pytest.raises(ValueError, match="is quantized .*save the float model"):
        save_task_model(model, tmp_path / "task", tokenizer, "classify",
                        {"problem_type": "single_label", "num_classes": 2,
                         "labels": ["a", "b"]})
    with pytest.raises(ValueError, match="is quantized"):
        bertdesk.save_pretrained(model.backbone, tmp_path / "backbone")
    assert list(tmp_path.iterdir()) == []  # (nor anything assembled beside)


@torch_only
def test_a_quantized_model_runs_every_dense_layer_through_onednn(monkeypatch):
    """On PyTorch's CPU each encoder product goes through oneDNN, and the
    model's outputs are those of Keras' int8 calls at every real token."""
    keras.utils.set_random_seed(9)
    model, x = BertTextClassifier(_backbone(), num_classes=3), _inputs()
    quantize_int8(model)
    calls = []  # the oneDNN products made (not merely considered)
    int8_dense = int8_kernels.int8_dense
    monkeypatch.setattr(int8_kernels, "int8_dense", lambda layer, x, **kwargs:
                        calls.append(layer.path) or int8_dense(layer, x, **kwargs))
    fast = to_np(model.predict_on_batch(x)["logits"])
    # 2 layers x (q/k/v, attention output, intermediate, output), the last
    # layer's q/k/v twice ([CLS] and every position), the pooler
    assert len(calls) == 2 * 4 + 1 + 1
    _without_fast_path(monkeypatch)
    np.testing.assert_allclose(fast, to_np(model.predict_on_batch(x)["logits"]),
                               rtol=1e-5, atol=1e-5)


# === Predictor and the command line ===
@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    keras.utils.set_random_seed(7)
    folder = tmp_path_factory.mktemp("int8") / "model"
    tokenizer = bertdesk.BertTokenizer.from_pretrained(bertdesk.bundled_checkpoint())
    backbone = bertdesk.BertBackbone(vocabulary_size=30522, num_layers=2, hidden_dim=16,
                                     num_heads=2, intermediate_dim=32, max_sequence_length=64)
    model = BertTextClassifier(backbone, num_classes=2)
    model.classifier.kernel.assign(keras.ops.convert_to_numpy(model.classifier.kernel) * 30)
    save_task_model(model, folder, tokenizer, "classify",
                    {"problem_type": "single_label", "num_classes": 2, "labels": ["neg", "pos"]},
                    {"max_length": 32, "text_pair_column": None})
    return folder


TEXTS = ["A gripping plot, and fine acting.", "Dull.", "Nothing happens for two hours.",
         "Warm, funny and sad at once.", "The worst film of the year."]


def test_predictor_quantizes_on_request(classifier_folder):
    float_answers = Predictor.load(classifier_folder).classify(TEXTS)
    predictor = Predictor.load(classifier_folder, quantize="int8")
    assert predictor.model.model.backbone.encoder_layers[0].intermediate.quantization_mode \
        == "int8"
    answers = predictor.classify(TEXTS)
    for a, b in zip(answers, float_answers):
        for label in ("neg", "pos"):
            assert abs(a["scores"][label] - b["scores"][label]) < 0.05
    with pytest.raises(ValueError, match="quantize='int4'"):
        Predictor.load(classifier_folder, quantize="int4")


def test_evaluate_and_predict_quantize_on_request(classifier_folder, tmp_path, capsys,
                                                  monkeypatch):
    import bertdesk.quantization

    data = tmp_path / "data.csv"
    gold = ["pos" if i % 2 else "neg" for i in range(len(TEXTS))]
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"]] + list(map(list, zip(TEXTS, gold))))
    quantized = Predictor.load(classifier_folder, quantize="int8").classify(TEXTS)
    float_answers = Predictor.load(classifier_folder).classify(TEXTS)
    calls = []
    monkeypatch.setattr(bertdesk.quantization, "quantize_int8",
                        lambda model: calls.append(model) or quantize_int8(model))

    out = tmp_path / "metrics.json"
    assert cli_main(["evaluate", "--model", str(classifier_folder), "--data", str(data),
                     "--metrics-out", str(out), "--quantize", "int8"]) == 0
    accuracy = np.mean([a["label"] == g for a, g in zip(quantized, gold)])
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(accuracy)
    assert len(calls) == 1

    predictions = tmp_path / "predictions.jsonl"
    assert cli_main(["predict", "--model", str(classifier_folder), "--data", str(data),
                     "--output", str(predictions), "--quantize", "int8"]) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["prediction"] for r in rows] == [a["label"] for a in quantized]
    np.testing.assert_allclose([r["confidence"] for r in rows],
                               [a["score"] for a in quantized], atol=1e-5)
    assert max(abs(r["confidence"] - a["score"]) for r, a in zip(rows, float_answers)) > 1e-5
    assert len(calls) == 2

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli_main(["evaluate", "--model", str(classifier_folder), "--data", str(data),
                  "--quantize", "int4"])
    assert exit_.value.code == 2
    assert "--quantize" in capsys.readouterr().err


@pytest.mark.parametrize("mixed", [True, False])
def test_evaluate_and_predict_compute_in_bfloat16_on_request(classifier_folder, tmp_path,
                                                             capsys, monkeypatch, mixed):
    """`--mixed-precision` builds the model under `mixed_bfloat16` (its
    predictions are those of a model loaded under that policy), and passes
    the slow-bfloat16 warning on to stderr, worded for prediction."""
    import bertdesk.tasks.saving
    from bertdesk.training import precision

    data = tmp_path / "data.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"]] + [[t, "pos"] for t in TEXTS])
    float_answers = Predictor.load(classifier_folder).classify(TEXTS)
    keras.config.set_dtype_policy("mixed_bfloat16")
    bf16_answers = Predictor.load(classifier_folder).classify(TEXTS)
    keras.config.set_dtype_policy("float32")
    assert max(abs(a["score"] - b["score"]) for a, b in zip(bf16_answers, float_answers)) > 1e-4

    monkeypatch.setattr(precision, "slow_bfloat16_warning",
                        lambda job: f"bfloat16 is slow for {job}")
    policies = []
    load = bertdesk.tasks.saving.load_model
    monkeypatch.setattr(bertdesk.tasks.saving, "load_model",
                        lambda folder: policies.append(keras.config.dtype_policy().name)
                        or load(folder))
    flag = ["--mixed-precision"] if mixed else []
    capsys.readouterr()
    predictions = tmp_path / "predictions.jsonl"
    assert cli_main(["predict", "--model", str(classifier_folder), "--data", str(data),
                     "--output", str(predictions)] + flag) == 0
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    expected = bf16_answers if mixed else float_answers
    np.testing.assert_allclose([r["confidence"] for r in rows],
                               [a["score"] for a in expected], atol=1e-6)
    assert cli_main(["evaluate", "--model", str(classifier_folder), "--data", str(data)]
                    + flag) == 0
    policy = "mixed_bfloat16" if mixed else "float32"
    assert policies == [policy, policy]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == (["warning: bfloat16 is slow for prediction"] * 2 if mixed else [])


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="oneDNN's int8 product: PyTorch")
def test_the_int8_path_limits_onednns_primitive_caches_too(monkeypatch):
    """Prediction in int8 builds a primitive per batch length too: its first
    product bounds oneDNN's caches as the float32 path does (unless set)."""
    from bertdesk.layers import cpu_products

    for names in cpu_products.PRIMITIVE_CACHES:
        for name in names:
            monkeypatch.delenv(name, raising=False)
    int8_kernels._has_onednn.cache_clear()
    try:
        int8_kernels._has_onednn()
    finally:
        int8_kernels._has_onednn.cache_clear()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "128"
    assert os.environ["LRU_CACHE_CAPACITY"] == "64"
