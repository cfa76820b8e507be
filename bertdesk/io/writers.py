"""Writers of the two formats bertdesk reads but transformers does not:
Google's original TensorFlow checkpoint and a keras-hub preset. Each fills a
staging folder (`write_model_folder` moves it in place) from a backbone
config and canonical tensors (transformers' `BertModel` names), the inverse
of the readers in `formats`; tests read each back with its own library."""

import json
import warnings

import numpy as np

from bertdesk.io.atomic import atomic_write_text
from bertdesk.io.formats import HF_CONFIG_KEYS

# === Google's TF checkpoint ===
_GOOGLE_HEADS = {"cls.predictions.bias": "cls/predictions/output_bias",
                 "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
                 "cls.seq_relationship.bias": "cls/seq_relationship/output_bias"}


def canonical_to_google(name):
    """(Google variable name, transpose?) of a canonical tensor name, as
    google-research/bert's modeling.py scopes its variables: dense kernels
    stored (in, out), LayerNorm as gamma/beta, embeddings without `.weight`,
    the backbone under `bert/`."""
    if name in _GOOGLE_HEADS:
        return _GOOGLE_HEADS[name], False
    parts = name.replace("encoder.layer.", "encoder.layer_").split(".")
    transpose = False
    if parts[-2] == "LayerNorm":
        parts[-1] = "gamma" if parts[-1] == "weight" else "beta"
    elif parts[-2].endswith("_embeddings"):
        parts = parts[:-1]
    elif parts[-1] == "weight":
        parts[-1], transpose = "kernel", True
    return "/".join(([] if parts[0] == "cls" else ["bert"]) + parts), transpose


def write_google(staging, config, tensors):
    """`bert_config.json` and `bert_model.ckpt.*` (TensorFlow's V2 checkpoint
    format, through its SaveV2 op: every variable under the name Google's
    release gives it) into `staging`."""
    import tensorflow as tf

    names, values = [], []
    for name, value in sorted(tensors.items()):
        google, transpose = canonical_to_google(name)
        value = np.asarray(value, np.float32)
        names.append(google)
        values.append(np.ascontiguousarray(value.T if transpose else value))
    tf.raw_ops.SaveV2(prefix=str(staging / "bert_model.ckpt"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=values)
    # (Google's BertConfig takes every entry; layer_norm_eps, which its
    # modeling.py does not read, keeps a model with another epsilon whole)
    bert_config = {theirs: config[ours] for theirs, ours in HF_CONFIG_KEYS.items()
                   if ours in config}
    bert_config["hidden_act"] = "gelu"
    atomic_write_text(staging / "bert_config.json", json.dumps(bert_config, indent=2))


# === keras-hub preset ===
def write_keras_hub(staging, config, tensors, tokenizer=None):
    """A keras-hub `BertBackbone` preset (config.json, model.weights.h5,
    metadata.json; with `tokenizer`, its `BertTokenizer` and vocabulary)
    into `staging`: keras-hub's model built from the config, its weights
    assigned by layer name (the inverse of `formats.keras_hub_backbone_
    tensors`), saved by keras-hub itself."""
    import keras_hub

    if config.get("layer_norm_epsilon", 1e-12) != 1e-12:
        raise ValueError(f"keras-hub's BertBackbone has LayerNorm epsilon 1e-12; this model's "
                         f"is {config['layer_norm_epsilon']}")
    if config.get("attention_dropout", config["dropout"]) != config["dropout"]:
        raise ValueError("keras-hub's BertBackbone has one dropout rate; this model's "
                         f"attention dropout {config['attention_dropout']} differs from its "
                         f"dropout {config['dropout']}")
    model = keras_hub.models.BertBackbone(
        vocabulary_size=config["vocabulary_size"], num_layers=config["num_layers"],
        num_heads=config["num_heads"], hidden_dim=config["hidden_dim"],
        intermediate_dim=config["intermediate_dim"], dropout=config["dropout"],
        max_sequence_length=config["max_sequence_length"],
        num_segments=config["type_vocabulary_size"])

    def put(variable, value, transpose=False):
        value = np.asarray(value, np.float32)
        variable.assign((value.T if transpose else value).reshape(tuple(variable.shape)))

    t = tensors
    put(model.get_layer("token_embedding").embeddings, t["embeddings.word_embeddings.weight"])
    put(model.get_layer("position_embedding").position_embeddings,
        t["embeddings.position_embeddings.weight"])
    put(model.get_layer("segment_embedding").embeddings,
        t["embeddings.token_type_embeddings.weight"])
    norm = model.get_layer("embeddings_layer_norm")
    put(norm.gamma, t["embeddings.LayerNorm.weight"])
    put(norm.beta, t["embeddings.LayerNorm.bias"])
    pooler = model.get_layer("pooled_dense")
    put(pooler.kernel, t["pooler.dense.weight"], transpose=True)
    put(pooler.bias, t["pooler.dense.bias"])
    for i in range(config["num_layers"]):
        block = model.get_layer(f"transformer_layer_{i}")
        attn = block._self_attention_layer
        p = f"encoder.layer.{i}."
        for dense, name in ((attn.query_dense, "attention.self.query"),
                            (attn.key_dense, "attention.self.key"),
                            (attn.value_dense, "attention.self.value"),
                            (attn.output_dense, "attention.output.dense"),
                            (block._feedforward_intermediate_dense, "intermediate.dense"),
                            (block._feedforward_output_dense, "output.dense")):
            put(dense.kernel, t[f"{p}{name}.weight"], transpose=True)
            put(dense.bias, t[f"{p}{name}.bias"])
        for norm, name in ((block._self_attention_layer_norm, "attention.output.LayerNorm"),
                           (block._feedforward_layer_norm, "output.LayerNorm")):
            put(norm.gamma, t[f"{p}{name}.weight"])
            put(norm.beta, t[f"{p}{name}.bias"])
    with warnings.catch_warnings():  # (Keras' PyTorch weight saving, numpy 2's copy keyword)
        warnings.filterwarnings("ignore", message=".*copy keyword")
        model.save_to_preset(str(staging))
    if tokenizer is not None:
        # keras-hub's tokenizer strips accents only when told (its default is
        # not to, whatever the casing): the export says what this one does
        strip = tokenizer.strip_accents
        keras_hub.models.BertTokenizer(
            vocabulary=list(tokenizer.vocabulary), lowercase=tokenizer.lowercase,
            strip_accents=tokenizer.lowercase if strip is None else bool(strip),
        ).save_to_preset(str(staging))
