"""Every public layer through the shared harness, on the current backend."""

import keras
import numpy as np
import pytest
from conftest import TINY, random_batch
from harness import (check_config_roundtrip, check_fit_step, check_keras_roundtrip,
                     check_mixed_precision, check_padding_invariance,
                     check_variable_length, flat_outputs)

from bertdesk.layers import (BertEmbeddings, BertEncoderBlock, BertNSPHead, BertPooler,
                             BertSelfAttention)

H = TINY["hidden_dim"]


def hidden_inputs(seq=10, batch=3, seed=0):
    batch_ = random_batch(batch=batch, seq=seq, seed=seed)
    x = np.random.default_rng(seed).normal(size=(batch, seq, H)).astype("float32")
    return {"x": x, "padding_mask": batch_["padding_mask"]}


def sequence_model(layer_fn, name):
    x = keras.Input((None, H), name="x")
    mask = keras.Input((None,), dtype="int32", name="padding_mask")
    return keras.Model({"x": x, "padding_mask": mask}, layer_fn()(x, padding_mask=mask), name=name)


def attention_model(**kw):
    return sequence_model(lambda: BertSelfAttention(num_heads=2, head_dim=H // 2, **kw),
                          "attention_model")


def encoder_model(**kw):
    return sequence_model(lambda: BertEncoderBlock(num_heads=2, intermediate_dim=32, **kw),
                          "encoder_model")


def embeddings_model():
    tok = keras.Input((None,), dtype="int32", name="token_ids")
    seg = keras.Input((None,), dtype="int32", name="segment_ids")
    out = BertEmbeddings(vocabulary_size=120, hidden_dim=H, max_sequence_length=32)(tok, seg)
    return keras.Model({"token_ids": tok, "segment_ids": seg}, out, name="embeddings_model")


def pooler_model():
    x = keras.Input((None, H), name="x")
    return keras.Model({"x": x}, BertPooler()(x), name="pooler_model")


def nsp_model():
    x = keras.Input((H,), name="pooled")
    return keras.Model({"pooled": x}, BertNSPHead()(x), name="nsp_model")


def emb_inputs(seq=10):
    b = random_batch(seq=seq)
    return {"token_ids": b["token_ids"], "segment_ids": b["segment_ids"]}


CASES = {
    "embeddings": (embeddings_model, emb_inputs),
    "attention": (attention_model, lambda seq=10: hidden_inputs(seq)),
    "encoder": (encoder_model, lambda seq=10: hidden_inputs(seq)),
    "pooler": (pooler_model, lambda seq=10: {"x": hidden_inputs(seq)["x"]}),
    "nsp": (nsp_model, lambda seq=10: {"pooled": hidden_inputs(seq)["x"][:, 0]}),
}
LAYERS = {
    "embeddings": BertEmbeddings(vocabulary_size=120, hidden_dim=H, dropout=0.2),
    "attention": BertSelfAttention(num_heads=2, head_dim=8, attention_dropout=0.0),
    "encoder": BertEncoderBlock(num_heads=2, intermediate_dim=32, layer_norm_epsilon=1e-6),
    "pooler": BertPooler(initializer_range=0.05),
    "nsp": BertNSPHead(),
}


@pytest.mark.parametrize("name", CASES)
def test_config_roundtrip(name):
    check_config_roundtrip(LAYERS[name])


@pytest.mark.parametrize("name", CASES)
def test_keras_file_roundtrip(name, tmp_path):
    build, inputs = CASES[name]
    check_keras_roundtrip(build(), inputs(), tmp_path)


@pytest.mark.parametrize("name", ["embeddings", "attention", "encoder", "pooler"])
def test_variable_sequence_length(name):
    build, inputs = CASES[name]
    check_variable_length(build(), inputs)


@pytest.mark.parametrize("name", ["attention", "encoder"])
def test_padding_invariance(name):
    build, inputs = CASES[name]
    check_padding_invariance(build(), inputs(), "padding_mask", float_key="x")


# bfloat16 against float32, the largest difference seen on the three
# backends: attention 5.1e-4, pooler and NSP head 1.1e-3, encoder block and
# embeddings 1.1-1.6e-2 (their LayerNorm divides bfloat16's rounding by a
# small deviation); with the padding mask lost the attention is 5.1e-2 away
MIXED_PRECISION_ATOL = {"attention": 5e-3, "pooler": 5e-3, "nsp": 5e-3,
                        "encoder": 0.04, "embeddings": 0.04}


@pytest.mark.parametrize("name", CASES)
def test_mixed_precision(name):
    build, inputs = CASES[name]
    model = check_mixed_precision(build, inputs(), atol=MIXED_PRECISION_ATOL[name])
    out = model(inputs())
    assert keras.backend.standardize_dtype(out.dtype) == ("float32" if name == "nsp" else "bfloat16")


@pytest.mark.parametrize("name", CASES)
def test_fit_step(name):
    build, inputs = CASES[name]
    model = build()
    x = inputs()
    y = np.random.default_rng(1).normal(size=flat_outputs(model(x))["out"].shape)
    check_fit_step(model, x, y.astype("float32"), "mse")


def test_fused_attention_matches_explicit_path():
    x = hidden_inputs(seq=12)
    fused = attention_model(use_fused_attention=True)
    explicit = attention_model(use_fused_attention=False)
    explicit.set_weights(fused.get_weights())
    a, b = flat_outputs(fused(x))["out"], flat_outputs(explicit(x))["out"]
    mask = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(a[mask], b[mask], atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_attention_is_the_formula_over_the_kernels_q_k_v_blocks(fused):
    """The fused kernel's columns are [q | k | v], each head-major: every
    backend's projection path (one product then split, or one einsum over
    the kernel's (hidden, 3, heads, head_dim) view on JAX) gives softmax(q
    k^T / sqrt(d) + mask) v computed here in numpy."""
    heads, dim, seq = 2, H // 2, 7
    layer = BertSelfAttention(num_heads=heads, head_dim=dim, use_fused_attention=fused,
                              initializer_range=0.3)  # scores far from uniform
    x = hidden_inputs(seq=seq)
    layer(x["x"], padding_mask=x["padding_mask"])  # builds
    rng = np.random.default_rng(8)  # a bias for every column (its initial one is zero)
    layer.qkv.bias.assign(rng.normal(scale=0.5, size=layer.qkv.bias.shape).astype("float32"))
    out = keras.ops.convert_to_numpy(layer(x["x"], padding_mask=x["padding_mask"]))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (layer.qkv.kernel, layer.qkv.bias))
    q, k, v = ((x["x"] @ kernel[:, i * H:(i + 1) * H] + bias[i * H:(i + 1) * H])
               .reshape(3, seq, heads, dim) for i in range(3))
    scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(dim)
    scores = np.where(x["padding_mask"][:, None, None, :] > 0, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.einsum("bnqk,bknd->bqnd", probs, v).reshape(3, seq, H)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_attention_probabilities_are_masked_and_normalised():
    layer = BertSelfAttention(num_heads=2, head_dim=8)
    x = hidden_inputs(seq=9)
    _, probs = layer(x["x"], padding_mask=x["padding_mask"], return_attention_scores=True)
    probs = np.asarray(keras.ops.convert_to_numpy(probs))
    assert probs.shape == (3, 2, 9, 9)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    keys_padded = x["padding_mask"][:, None, None, :] == 0
    assert np.all(np.where(np.broadcast_to(keys_padded, probs.shape), probs, 0) < 1e-6)


def test_attention_dropout_only_in_training():
    layer = BertSelfAttention(num_heads=2, head_dim=8, attention_dropout=0.5)
    x = hidden_inputs(seq=8)
    a = np.asarray(keras.ops.convert_to_numpy(layer(x["x"], padding_mask=x["padding_mask"])))
    b = np.asarray(keras.ops.convert_to_numpy(layer(x["x"], padding_mask=x["padding_mask"])))
    c = np.asarray(keras.ops.convert_to_numpy(
        layer(x["x"], padding_mask=x["padding_mask"], training=True)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def _rng_state(dropout):
    if keras.backend.backend() == "torch":  # unseeded: torch's global generator
        import torch

        return torch.get_rng_state()
    return keras.ops.convert_to_numpy(dropout.seed_generator.state)


def _set_rng_state(dropout, state):
    if keras.backend.backend() == "torch":
        import torch

        torch.set_rng_state(state)
    else:
        dropout.seed_generator.state.assign(state)


def test_attention_in_training_drops_probabilities_as_the_dropout_layer_does():
    """The explicit path scales queries and output instead of the scores
    and probabilities: the same numbers as softmax -> BertDropout -> @ v."""
    layer = BertSelfAttention(num_heads=2, head_dim=8, attention_dropout=0.3)
    x = hidden_inputs(seq=9)
    _, probs = layer(x["x"], padding_mask=x["padding_mask"], return_attention_scores=True)
    state = _rng_state(layer.dropout_layer)
    out = keras.ops.convert_to_numpy(
        layer(x["x"], padding_mask=x["padding_mask"], training=True))
    _set_rng_state(layer.dropout_layer, state)
    dropped = keras.ops.convert_to_numpy(layer.dropout_layer(probs, training=True))
    real = keras.ops.convert_to_numpy(probs) > 0  # not a padded key
    assert 0.15 < (dropped[real] == 0).mean() < 0.45  # about 30% dropped
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (layer.qkv.kernel, layer.qkv.bias))
    v = (x["x"] @ kernel[:, 32:] + bias[32:]).reshape(3, 9, 2, 8)
    expected = np.einsum("bnqk,bknd->bqnd", dropped, v).reshape(3, 9, 16)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_gelu_is_exact_erf():
    from math import erf, sqrt

    from bertdesk.layers.bert_encoder_block import gelu

    xs = np.array([-3.0, -1.0, -0.3, 0.0, 0.5, 2.0], dtype="float32")
    expected = [v * 0.5 * (1 + erf(v / sqrt(2))) for v in xs]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gelu(xs)), expected, atol=1e-6)


def test_embedding_initialisation_is_normal_002():
    layer = BertEmbeddings(vocabulary_size=2000, hidden_dim=64)
    layer.build((None, None))
    w = np.asarray(keras.ops.convert_to_numpy(layer.token_embedding.embeddings))
    assert abs(w.std() - 0.02) < 0.001 and abs(w.mean()) < 0.001
    assert np.abs(w).max() > 0.06  # not truncated at 2 std


def test_a_sequence_past_the_position_table_is_refused():
    """JAX read NaN rows for positions past the table, without a word;
    PyTorch and TensorFlow failed with a bare index error."""
    import bertdesk

    backbone = bertdesk.BertBackbone(**{**TINY, "max_sequence_length": 8})
    fits, over = random_batch(batch=2, seq=8), random_batch(batch=2, seq=9)
    assert np.isfinite(keras.ops.convert_to_numpy(backbone(fits)["sequence_output"])).all()
    with pytest.raises(ValueError, match="token_ids has 9 positions, more than the model's 8"):
        backbone(over)
    with pytest.raises(ValueError, match="more than the model's 8"):
        backbone.predict(over, verbose=0)
