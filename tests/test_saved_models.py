"""`.keras` files of task models written by earlier versions still load and
resume: the classifier's and pretraining model's graphs now call the
backbone's layers one by one (`encode_positions`), and Keras lays out weight
files by `model.layers`."""

from pathlib import Path

import keras
import numpy as np
import pytest

import bertdesk.pretraining.objectives  # noqa: F401  (registers the loss for loading)
import bertdesk.tasks.bert_text_classifier  # noqa: F401
import bertdesk.training.optimization  # noqa: F401
from bertdesk.models.bert_backbone import BACKBONE_INPUTS

OLD = Path(__file__).parent / "data" / "keras_files_before_encode_positions"


@pytest.mark.parametrize("name", ["classifier", "pretraining"])
def test_files_written_before_encode_positions_load_and_resume(name):
    expected = np.load(OLD / "expected.npz")
    x = {k[len("input_"):]: expected[k] for k in expected.files if k.startswith("input_")}
    if name == "classifier":
        x = {k: x[k] for k in BACKBONE_INPUTS}
    model = keras.saving.load_model(OLD / f"{name}.keras", safe_mode=True)
    # As --resume does: this backend's choice (the file says True, from JAX).
    model.jit_compile = keras.backend.backend() != "torch"

    outputs = model.predict_on_batch(x)
    for key, value in outputs.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(value),
                                   expected[f"{name}_{key}"], atol=1e-5, err_msg=key)
    # One more AdamW step from the saved moments gives the old code's weights:
    # a moment restored onto another same-shaped variable would not.
    model.train_on_batch(x, {key: expected[f"target_{key}"] for key in outputs})
    for w in model.weights:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(w),
                                   expected[f"{name}_after_{w.path}"], atol=1e-3, rtol=0,
                                   err_msg=w.path)


def test_the_backbone_is_one_layer_of_the_task_models():
    import bertdesk
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier

    backbone = bertdesk.BertBackbone(vocabulary_size=30, num_layers=2, hidden_dim=8,
                                     num_heads=2, intermediate_dim=16, max_sequence_length=16)
    for model in (BertTextClassifier(backbone, num_classes=2),
                  bertdesk.BertPretrainingModel(backbone)):
        names = [layer.name for layer in model.layers]
        assert names.count(backbone.name) == 1
        assert not {layer.name for layer in backbone.layers} & set(names) - set(BACKBONE_INPUTS)
        assert model.get_layer(backbone.name) is backbone
        assert len(model.weights) == len({id(w) for w in model.weights})


def test_importing_the_tasks_package_registers_every_task_model(tmp_path):
    """The package says importing it registers every class a checkpoint
    names; the tagger, the span model and its loss were left out (a fresh
    process could not load their `.keras` files after `import
    bertdesk.tasks`)."""
    import os
    import subprocess
    import sys

    from conftest import TINY

    import bertdesk
    from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer, SpanLoss
    from bertdesk.tasks.bert_token_classifier import BertTokenClassifier

    for name, model in (("tagger", BertTokenClassifier(bertdesk.BertBackbone(**TINY), 3)),
                        ("span", BertQuestionAnswerer(bertdesk.BertBackbone(**TINY)))):
        model.compile(loss=SpanLoss() if name == "span" else None)
        model.save(tmp_path / f"{name}.keras")
    code = ("import keras, bertdesk.tasks\n"
            "for name in ('tagger', 'span'):\n"
            f"    m = keras.saving.load_model(r'{tmp_path}' + f'/{{name}}.keras', safe_mode=True)\n"
            "    print(type(m).__name__, type(m.loss).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["BertTokenClassifier", "NoneType", "BertQuestionAnswerer",
                                  "SpanLoss"]
