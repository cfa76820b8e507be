"""BertBackbone and BertPretrainingModel through the harness, plus presets."""

import json

import keras
import numpy as np
import pytest
from conftest import TINY, random_batch, skip_torch_compile
from harness import (check_fit_step, check_keras_roundtrip, check_mixed_precision,
                     check_padding_invariance, check_variable_length, flat_outputs, to_np)

import bertdesk
from bertdesk import BertBackbone, BertPretrainingModel


def backbone(**kw):
    return BertBackbone(**{**TINY, **kw})


def pretraining_inputs(seq=10):
    x = random_batch(seq=seq)
    x["mask_positions"] = np.array([[1, 2], [3, 0], [0, 1]], "int32")
    return x


def test_outputs_shapes_and_dtypes():
    out = backbone()(random_batch(seq=10))
    assert set(out) == {"sequence_output", "pooled_output"}
    assert tuple(out["sequence_output"].shape) == (3, 10, 16)
    assert tuple(out["pooled_output"].shape) == (3, 16)


def test_hidden_states_and_attentions():
    model = backbone(output_hidden_states=True, output_attentions=True)
    x = random_batch(seq=10)
    out = flat_outputs(model(x))
    assert out["hidden_states"].shape == (3, 3, 10, 16)  # embeddings + 2 layers
    assert out["attention_probs"].shape == (3, 2, 2, 10, 10)
    np.testing.assert_allclose(out["hidden_states"][:, -1], out["sequence_output"], atol=1e-6)
    np.testing.assert_allclose(out["attention_probs"].sum(-1), 1.0, atol=1e-5)
    # The same weights without the extra outputs give the same encoding.
    plain = backbone()
    plain.set_weights(model.get_weights())
    np.testing.assert_allclose(to_np(plain(x)["sequence_output"]), out["sequence_output"],
                               atol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_the_graph_declares_what_the_blocks_compute(policy):
    """Encoder blocks give the functional graph their outputs' shapes and
    dtypes without computing (`compute_output_spec`): what they declare
    is what they return, for every output, the attention probabilities
    (float32) and the [CLS]-only last layer's query path included."""
    keras.config.set_dtype_policy(policy)
    model = backbone(output_hidden_states=True, output_attentions=True)
    x = random_batch(seq=10)
    real = model(x)
    for name, symbolic in model.output.items():
        got = real[name]
        assert keras.backend.standardize_dtype(got.dtype) == symbolic.dtype, name
        assert len(got.shape) == len(symbolic.shape), name
        assert all(s is None or s == g for s, g in zip(symbolic.shape, got.shape)), name
    assert model.output["attention_probs"].dtype == "float32"
    block = model.encoder_layers[-1]
    spec = block.compute_output_spec(keras.KerasTensor((3, 10, 16)),
                                     query=keras.KerasTensor((3, 1, 16)))
    cls_only = model.encode_positions(x)
    assert tuple(spec.shape) == tuple(cls_only.shape) == (3, 1, 16)
    assert spec.dtype == keras.backend.standardize_dtype(cls_only.dtype)


def test_padding_invariance():
    model = backbone()
    check_padding_invariance(model, random_batch(seq=12), "padding_mask", float_key="token_ids",
                             seq_outputs={"sequence_output"})


def test_variable_length():
    check_variable_length(backbone(), lambda seq: random_batch(seq=seq), lengths=(6, 17, 32))


def test_keras_roundtrip(tmp_path):
    loaded = check_keras_roundtrip(backbone(output_hidden_states=True), random_batch(), tmp_path)
    assert loaded.output_hidden_states and loaded.num_layers == 2


def test_pretraining_model_roundtrip_keeps_weights_tied(tmp_path):
    model = BertPretrainingModel(backbone())
    loaded = check_keras_roundtrip(model, pretraining_inputs(), tmp_path)
    assert loaded.mlm_head.token_embedding is loaded.backbone.token_embedding
    out = flat_outputs(loaded(pretraining_inputs()))
    assert out["mlm_logits"].shape == (3, 2, 120) and out["nsp_logits"].shape == (3, 2)


# === The last layer at a few positions (encode_positions) ===

POSITIONS = np.array([[0, 9, 3, 3], [6, 1, 2, 0], [8, 0, 4, 5]], "int32")  # padding included


def perturbed(model, scale=0.1):
    """`model` with noise on every weight: nonzero biases, uneven LayerNorms."""
    rng = np.random.default_rng(7)
    model.set_weights([w + scale * rng.standard_normal(w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


@pytest.mark.parametrize("fused", [True, False])
def test_encode_positions_is_the_sequence_output_at_those_positions(fused):
    model = perturbed(backbone(use_fused_attention=fused))
    x = random_batch(seq=10)
    full = to_np(model(x)["sequence_output"])
    at = to_np(model.encode_positions(x, POSITIONS))
    assert at.shape == (3, 4, 16)
    np.testing.assert_allclose(at, np.take_along_axis(full, POSITIONS[:, :, None], 1),
                               atol=1e-5)
    np.testing.assert_allclose(to_np(model.encode_positions(x)), full[:, :1], atol=1e-5)


def test_encoder_block_query_attends_to_every_position():
    block = bertdesk.layers.BertEncoderBlock(num_heads=2, intermediate_dim=32)
    x = keras.random.normal((3, 10, 16), seed=1)
    block.build(x.shape)
    perturbed(block, 0.3)
    mask = random_batch(seq=10)["padding_mask"]
    full, probs = block(x, padding_mask=mask, return_attention_scores=True)
    query = to_np(x)[:, [0, 7]]
    part, part_probs = block(x, padding_mask=mask, return_attention_scores=True, query=query)
    assert tuple(part_probs.shape) == (3, 2, 2, 10)
    np.testing.assert_allclose(to_np(part), to_np(full)[:, [0, 7]], atol=1e-5)
    np.testing.assert_allclose(to_np(part_probs), to_np(probs)[:, :, [0, 7]], atol=1e-6)


def test_encode_positions_in_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = perturbed(backbone())
    x = random_batch(seq=10)
    full = to_np(model(x)["sequence_output"]).astype("float32")
    at = to_np(model.encode_positions(x, POSITIONS)).astype("float32")
    np.testing.assert_allclose(at, np.take_along_axis(full, POSITIONS[:, :, None], 1),
                               atol=0.05)


def test_pretraining_model_matches_the_heads_on_the_full_sequence():
    model = perturbed(BertPretrainingModel(backbone()))
    x = pretraining_inputs()
    out = flat_outputs(model(x))
    full = model.backbone({k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")})
    mlm = to_np(model.mlm_head(full["sequence_output"], x["mask_positions"]))
    np.testing.assert_allclose(out["mlm_logits"], mlm, atol=1e-5)
    np.testing.assert_allclose(out["nsp_logits"], to_np(model.nsp_head(full["pooled_output"])),
                               atol=1e-5)


def _one_sgd_step_both_ways(make_task, plain_outputs, x, y, loss):
    """Train a task model one SGD step, and a copy of it whose graph runs the
    whole last layer (`plain_outputs(copy, inputs)`); return both weights."""
    fast = perturbed(make_task())
    copy = make_task()
    copy.set_weights(fast.get_weights())
    inputs = {k: keras.Input((None,), dtype="int32", name=k) for k in x}
    plain = keras.Model(inputs, plain_outputs(copy, inputs))
    before = fast.get_weights()
    for model in (fast, plain):
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
        model.train_on_batch(x, y)
    assert sum(not np.allclose(a, b) for a, b in zip(before, fast.get_weights())) > 10
    return fast.get_weights(), copy.get_weights()


def _backbone_inputs(inputs):
    return {k: inputs[k] for k in ("token_ids", "segment_ids", "padding_mask")}


def test_pretraining_step_matches_the_full_sequence_path():
    def plain_outputs(model, inputs):
        encoded = model.backbone(_backbone_inputs(inputs))
        return {"mlm_logits": model.mlm_head(encoded["sequence_output"],
                                             inputs["mask_positions"]),
                "nsp_logits": model.nsp_head(encoded["pooled_output"])}

    y = {"mlm_logits": np.array([[5, 6], [7, 8], [9, 10]], "int32"),
         "nsp_logits": np.array([0, 1, 0], "int32")}
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    fast, plain = _one_sgd_step_both_ways(
        lambda: BertPretrainingModel(backbone(dropout=0.0, attention_dropout=0.0)),
        plain_outputs, pretraining_inputs(), y, {"mlm_logits": loss, "nsp_logits": loss})
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_text_classifier_step_matches_the_full_sequence_path():
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier

    def plain_outputs(model, inputs):
        pooled = model.backbone(_backbone_inputs(inputs))["pooled_output"]
        return {"logits": keras.ops.cast(model.classifier(pooled), "float32")}

    x = random_batch(seq=10)
    make = lambda: BertTextClassifier(backbone(dropout=0.0, attention_dropout=0.0),  # noqa: E731
                                      num_classes=3)
    model = perturbed(make())
    logits = to_np(model(x)["logits"])
    full = model.backbone(x)["pooled_output"]
    np.testing.assert_allclose(logits, to_np(model.classifier(full)), atol=1e-5)
    fast, plain = _one_sgd_step_both_ways(
        make, plain_outputs, x, np.array([0, 2, 1], "int32"),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_mixed_precision():
    model = check_mixed_precision(backbone, random_batch())
    out = model(random_batch())
    assert keras.backend.standardize_dtype(out["sequence_output"].dtype) == "bfloat16"


def test_fit_step_backbone():
    model = backbone()
    x = random_batch()
    y = np.random.default_rng(0).normal(size=(3, 16)).astype("float32")
    check_fit_step(model, x, {"pooled_output": y},
                   {"pooled_output": "mse", "sequence_output": None})


@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=skip_torch_compile)])
def test_fit_step_pretraining(jit):
    model = BertPretrainingModel(backbone())
    x = pretraining_inputs()
    y = {"mlm_logits": np.array([[5, 6], [7, 8], [9, 10]], "int32"),
         "nsp_logits": np.array([0, 1, 0], "int32")}
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss={"mlm_logits": loss, "nsp_logits": loss},
                  jit_compile=jit)
    before = model.get_weights()
    hist = model.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))


@skip_torch_compile
def test_jit_compiled_predict_matches_eager():
    model = backbone()
    x = random_batch()
    eager = flat_outputs(model(x))
    model.compile(jit_compile=True)
    compiled = model.predict(x, verbose=0)
    np.testing.assert_allclose(np.asarray(compiled["sequence_output"]), eager["sequence_output"],
                               atol=1e-5)


@skip_torch_compile
def test_mixed_precision_fit_step_with_jit():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = backbone()
    model.compile(optimizer="adam", loss={"pooled_output": "mse", "sequence_output": None},
                  jit_compile=True)
    y = np.zeros((3, 16), "float32")
    hist = model.fit(random_batch(), {"pooled_output": y}, verbose=0)
    assert np.isfinite(hist.history["loss"][0])


def bert_parameter_count(V, L, H, F, P=512, T=2):
    """Closed form of BERT's parameter count (embeddings, layers, pooler)."""
    embeddings = (V + P + T) * H + 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H
    return embeddings + L * layer + H * H + H


def test_base_parameter_count_is_bert_base_uncased():
    # BERT-base uncased with pooler, as transformers' BertModel counts it.
    assert BertBackbone.from_preset("base").count_params() == 109_482_240
    assert bert_parameter_count(30522, 12, 768, 3072) == 109_482_240


@pytest.mark.parametrize("name", ["tiny", "mini", "small"])
def test_preset_parameter_counts(name):
    c = bertdesk.preset_config(name)
    expected = bert_parameter_count(c["vocabulary_size"], c["num_layers"], c["hidden_dim"],
                                    c["intermediate_dim"])
    assert BertBackbone.from_preset(name).count_params() == expected


@pytest.mark.backend_neutral
def test_preset_shapes_follow_the_rules():
    names = bertdesk.preset_names()
    assert names == sorted(["tiny", "mini", "small", "medium", "base", "large"])
    expected = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512),
                "base": (12, 768), "large": (24, 1024)}
    for name in names:
        c = bertdesk.preset_config(name)
        assert (c["num_layers"], c["hidden_dim"]) == expected[name]
        assert c["num_heads"] == c["hidden_dim"] // 64
        assert c["intermediate_dim"] == 4 * c["hidden_dim"]
        assert c["layer_norm_epsilon"] == 1e-12


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="tiny"):
        BertBackbone.from_preset("gigantic")


def test_preset_overrides():
    model = BertBackbone.from_preset("tiny", vocabulary_size=500, max_sequence_length=64)
    assert model.token_embedding.input_dim == 500
    assert json.dumps(model.get_config())  # JSON-serialisable config
