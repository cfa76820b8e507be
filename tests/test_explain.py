"""Token attributions and attention maps (bertdesk.explain) on every backend."""

import keras
import numpy as np
import pytest

import bertdesk
from bertdesk.explain import _forward, explain
from bertdesk.tasks.bert_text_classifier import BertTextClassifier


@pytest.fixture(scope="module")
def classifier(minilm_folder):
    keras.utils.set_random_seed(7)
    tokenizer = bertdesk.load_tokenizer(minilm_folder)
    backbone = bertdesk.BertBackbone(vocabulary_size=tokenizer.vocabulary_size, num_layers=2,
                                     hidden_dim=16, num_heads=2, intermediate_dim=32,
                                     max_sequence_length=64)
    model = BertTextClassifier(backbone, num_classes=3)
    # a head with large weights: logits far from zero, attributions far from noise
    kernel = np.random.default_rng(0).normal(size=model.classifier.kernel.shape)
    model.classifier.kernel.assign(kernel.astype("float32") * 5)
    return model, tokenizer


def test_forward_from_embeddings_is_the_model(classifier):
    model, tok = classifier
    enc = tok(["a short text", "and a longer second text here"], max_length=16,
              padding="longest")
    emb = keras.ops.convert_to_numpy(model.backbone.embeddings.token_embedding(enc["token_ids"]))
    ours = keras.ops.convert_to_numpy(_forward(model, emb, enc["segment_ids"],
                                               enc["padding_mask"]))
    theirs = keras.ops.convert_to_numpy(model.predict_on_batch(enc)["logits"])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_integrated_gradients_add_up_to_the_logit_change(classifier):
    model, tok = classifier
    r = explain(model, tok, "The film is wonderful, not dull.", steps=64)
    assert r["tokens"][0] == "[CLS]" and r["tokens"][-1] == "[SEP]"
    assert r["attributions"].shape == (len(r["tokens"]),)
    assert r["target"] == int(np.argmax(r["logits"]))
    change = r["logits"][r["target"]] - r["baseline_logit"]
    assert abs(change) > 1e-3
    # completeness (Sundararajan et al.): sum of attributions = logit(x) - logit(baseline)
    assert r["attributions"].sum() == pytest.approx(change, rel=0.05, abs=1e-3)
    assert np.ptp(r["attributions"]) > 0


def test_integrated_gradients_double_the_steps_until_they_add_up(classifier):
    model, tok = classifier
    text = "The film is wonderful, not dull."

    def gap(r):
        return abs(r["attributions"].sum() - (r["logits"][r["target"]] - r["baseline_logit"]))

    # Few points: on JAX each new number of points is a new batch shape to compile.
    coarse = explain(model, tok, text, steps=1, tolerance=1e9)  # any gap accepted
    assert coarse["steps"] == 1
    fine = explain(model, tok, text, steps=1, tolerance=0.0, max_steps=4)  # none accepted
    assert fine["steps"] == 4
    assert gap(fine) < gap(coarse)
    assert explain(model, tok, text, method="gradient_x_input")["steps"] == 1


def test_gradient_x_input_matches_a_finite_difference(classifier):
    model, tok = classifier
    text = "gripping from start to finish"
    r = explain(model, tok, text, method="gradient_x_input", target=1)
    enc = tok([text], max_length=128, padding="longest")
    emb = keras.ops.convert_to_numpy(model.backbone.embeddings.token_embedding(enc["token_ids"]))
    f = lambda s: float(keras.ops.convert_to_numpy(  # noqa: E731
        _forward(model, emb * s, enc["segment_ids"], enc["padding_mask"]))[0, 1])
    eps = 1e-2
    directional = (f(1 + eps) - f(1 - eps)) / (2 * eps)  # d/ds logit(s * x) at s = 1
    assert r["attributions"].sum() == pytest.approx(directional, rel=0.02, abs=1e-4)


def test_attention_maps_and_offsets_for_a_pair(classifier):
    model, tok = classifier
    r = explain(model, tok, "a cat sat", text_pair="on the mat", method="gradient_x_input")
    n = len(r["tokens"])
    assert r["attentions"].shape == (2, 2, n, n)
    np.testing.assert_allclose(r["attentions"].sum(-1), 1.0, atol=1e-5)
    assert list(r["segments"]).count(1) == 4  # "on the mat [SEP]"
    cat = r["tokens"].index("cat")
    assert tuple(r["offsets"][cat]) == (2, 5) and tuple(r["offsets"][0]) == (0, 0)


def test_bad_arguments(classifier):
    model, tok = classifier
    with pytest.raises(ValueError, match="method must be one of"):
        explain(model, tok, "x", method="shap")
    with pytest.raises(ValueError, match="target 7 is not a class index"):
        explain(model, tok, "x", target=7)
    # refused before any work (steps=0 looped for ever; 32.5 overshot the input)
    for kwargs, message in (({"steps": 0}, "steps must be a whole number >= 1, got 0"),
                            ({"steps": 32.5}, "steps must be a whole number >= 1, got 32.5"),
                            ({"steps": 64, "max_steps": 32},
                             r"max_steps \(32\) must be at least steps \(64\)"),
                            ({"target": 1.7}, "target must be a class index"),
                            ({"target": True}, "target must be a class index"),
                            ({"target": "pos"}, "target must be a class index")):
        with pytest.raises(ValueError, match=message):
            explain(model, tok, "x", **kwargs)


def test_only_a_float_text_classifier_is_explained(classifier):
    """A tagger's and a span model's heads read every token: explain() would
    have run their head on the pooled [CLS], an output neither model has. A
    quantized model's gradients are its float kernels', not those of the
    pass it runs."""
    from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer
    from bertdesk.tasks.bert_token_classifier import BertTokenClassifier

    model, tok = classifier
    for other in (BertTokenClassifier(model.backbone, num_classes=5),
                  BertQuestionAnswerer(model.backbone)):
        with pytest.raises(TypeError, match="explain\\(\\) needs a text classifier "
                                            f"\\(BertTextClassifier\\), got {type(other).__name__}"):
            explain(other, tok, "John lives in Paris")
    quantized = BertTextClassifier.from_config(model.get_config())
    quantized.set_weights(model.get_weights())
    bertdesk.quantize_int8(quantized)
    with pytest.raises(ValueError, match="explain\\(\\) needs the float model: .* is quantized"):
        explain(quantized, tok, "a text")


def test_explained_under_mixed_precision(minilm_folder):
    """Mixed bfloat16: the position and segment lookups come in bfloat16,
    the token embeddings in float32 (TensorFlow refused to add them)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(7)
        tokenizer = bertdesk.load_tokenizer(minilm_folder)
        backbone = bertdesk.BertBackbone(vocabulary_size=tokenizer.vocabulary_size,
                                         num_layers=2, hidden_dim=16, num_heads=2,
                                         intermediate_dim=32, max_sequence_length=64)
        model = BertTextClassifier(backbone, num_classes=2)
        r = explain(model, tokenizer, "a gripping plot", steps=16, max_steps=16)
    finally:
        keras.config.set_dtype_policy(previous)
    assert len(r["attributions"]) == len(r["tokens"]) and np.isfinite(r["attributions"]).all()


def test_a_quantized_model_is_not_saved_in_a_file_keras_cannot_read(classifier, tmp_path):
    model, _ = classifier
    quantized = BertTextClassifier.from_config(model.get_config())
    quantized.set_weights(model.get_weights())
    bertdesk.quantize_int8(quantized)
    for save in (lambda: quantized.save(tmp_path / "q.keras"),
                 lambda: quantized.save_weights(tmp_path / "q.weights.h5"),
                 lambda: quantized.backbone.save(tmp_path / "b.keras")):
        with pytest.raises(ValueError, match="is quantized .*: save the float model"):
            save()
    assert not list(tmp_path.iterdir())
    model.save(tmp_path / "float.keras")  # the float model saves as before
