"""BERT encoder as a functional Keras model with dict inputs and outputs."""

import json
from importlib import resources

import keras
from keras import ops

from bertdesk.layers.bert_embeddings import BertEmbeddings
from bertdesk.layers.bert_encoder_block import BertEncoderBlock
from bertdesk.layers.bert_pooler import BertPooler
from bertdesk.layers.eager_calls import call_layer
from bertdesk.layers.packed_tokens import PackedTokens
from bertdesk.models.runs_graph_directly import RunsGraphDirectly
from bertdesk.models.saves_float_only import SavesFloatOnly

BACKBONE_INPUTS = ("token_ids", "segment_ids", "padding_mask")


def preset_names():
    """Names of the architecture presets shipped in `models/`."""
    root = resources.files("bertdesk_models")
    return sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json"))


def preset_config(name):
    """Backbone kwargs of the architecture preset `name` (e.g. "base")."""
    path = resources.files("bertdesk_models") / f"{name}.json"
    if not path.is_file():
        raise ValueError(
            f"Unknown preset {name!r}; available presets: {', '.join(preset_names())}"
        )
    return dict(json.loads(path.read_text())["backbone"])


def _encode(inputs, embeddings, encoder_layers, pooler, output_hidden_states,
            output_attentions, training=None, skip_padding=False):
    """The backbone's outputs from its input dict: the graph it is built
    with, and (`RunsGraphDirectly`) what it runs on eager PyTorch."""
    x = call_layer(embeddings, inputs["token_ids"], inputs["segment_ids"], training=training)
    # Only kept when asked for: at inference every layer's output is
    # otherwise freed as the next one runs (13 of them at base, batch
    # 16 x 128, held 82 MB to the end of the call).
    hidden_states, attention_probs = [x] if output_hidden_states else None, []
    packed = PackedTokens.of(inputs["padding_mask"], x) if skip_padding else None
    if packed is not None:
        x = packed.pack(x)  # (tokens, hidden)
    for layer in encoder_layers:
        if output_attentions:
            x, probs = _call_block(layer, x, inputs, packed, training,
                                   return_attention_scores=True)
            attention_probs.append(probs)
        else:
            x = _call_block(layer, x, inputs, packed, training)
        if output_hidden_states:
            hidden_states.append(x if packed is None else packed.unpack(x))
    if packed is not None:
        x = packed.unpack(x)  # (batch, seq, hidden), zeros at the padding
    outputs = {"sequence_output": x, "pooled_output": call_layer(pooler, x)}
    if output_hidden_states:
        outputs["hidden_states"] = ops.stack(hidden_states, axis=1)
    if output_attentions:
        outputs["attention_probs"] = ops.stack(attention_probs, axis=1)
    return outputs


def _call_block(layer, x, inputs, packed, training, **kwargs):
    """An encoder block on `x`, padded or (`packed` given) the real tokens."""
    if packed is not None:
        kwargs["packed"] = packed
    return call_layer(layer, x, padding_mask=inputs["padding_mask"], training=training,
                      **kwargs)


def _take_positions(h, positions):
    """`h` `(batch, seq, hidden)` at `positions` `(batch, P)`; None: [CLS]."""
    if positions is None:
        return h[:, :1, :]
    return ops.take_along_axis(h, ops.expand_dims(positions, -1), axis=1)


class BackboneAsOneLayer:
    """Mixin for functional models whose graph calls a backbone's layers one
    by one (through `BertBackbone.encode_positions`) instead of calling the
    backbone.

    `model.layers`, which `summary()`, `get_layer()` and Keras' weight files
    go by, still lists the backbone as one layer, in the place of its first
    layer. So `.keras` files nest the backbone's weights under
    `layers/bert_backbone/` as they did when the graph called
    `backbone(inputs)`: files written before `encode_positions` existed still
    load (a `--resume` checkpoint too: the optimizer's variables keep their
    order). Call `_show_backbone_as_one_layer(backbone)` before
    `super().__init__`: Keras tracks `layers` while building the model.
    """

    def _show_backbone_as_one_layer(self, backbone):
        # Not a tracked attribute (Keras is not initialised yet); `backbone`
        # is tracked by the functional init through `layers`.
        object.__setattr__(self, "_graph_backbone", backbone)

    @property
    def layers(self):
        layers = super().layers
        backbone = self.__dict__.get("_graph_backbone")
        if backbone is None:
            return layers
        owned = {id(layer) for layer in backbone.layers}
        shown, placed = [], False
        for layer in layers:
            if id(layer) not in owned:
                shown.append(layer)
            elif not placed:
                shown.append(backbone)
                placed = True
        return shown


# === Model ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertBackbone(SavesFloatOnly, RunsGraphDirectly, keras.Model):
    """The BERT encoder (Devlin et al., 2018) without task heads.

    Inputs are a dict of int tensors, each `(batch, seq)`: `token_ids`,
    `segment_ids`, `padding_mask` (1 at real tokens, 0 at padding); the
    tokenizer's output feeds it as it is. Outputs are a dict:
    `sequence_output` `(batch, seq, hidden)`, `pooled_output` `(batch, hidden)`,
    and when asked `hidden_states` `(batch, num_layers + 1, seq, hidden)`
    (embeddings, then every layer) and `attention_probs`
    `(batch, num_layers, heads, seq, seq)`.

    Args:
        vocabulary_size: word pieces in the vocabulary.
        num_layers: transformer blocks.
        hidden_dim: model width.
        num_heads: attention heads (hidden_dim // 64 in the reference shapes).
        intermediate_dim: feed-forward width.
        max_sequence_length: learned positions.
        type_vocabulary_size: segments.
        dropout: hidden dropout.
        attention_dropout: attention-probability dropout.
        layer_norm_epsilon: LayerNorm epsilon (1e-12 in the reference).
        initializer_range: std of the normal initialiser.
        output_hidden_states: add `hidden_states` to the outputs.
        output_attentions: add `attention_probs` to the outputs (uses the
            explicit attention path).
        use_fused_attention: use `keras.ops.dot_product_attention` when it
            applies.
        gradient_checkpointing: recompute each encoder block's activations
            in the backward pass instead of keeping them (less memory, one
            more forward pass per training step; same numbers; not with
            `output_attentions`). Settable
            later: `backbone.gradient_checkpointing = True`, before compiling.
        skip_padding: on PyTorch (eager), run every step but attention on
            the batch's real tokens alone (`layers.PackedTokens`): the work
            of the projections and the feed-forward in proportion to the
            real tokens, not the padded batch. The same numbers at the real
            tokens, dropout masks included; `sequence_output` is zero at the
            padding (which nothing should read). No effect on JAX and
            TensorFlow, whose compiled steps need fixed shapes. Settable
            later: `backbone.skip_padding = True`.
        dtype: dtype policy of every layer (e.g. "mixed_bfloat16").
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        hidden_dim,
        num_heads,
        intermediate_dim,
        max_sequence_length=512,
        type_vocabulary_size=2,
        dropout=0.1,
        attention_dropout=0.1,
        layer_norm_epsilon=1e-12,
        initializer_range=0.02,
        output_hidden_states=False,
        output_attentions=False,
        use_fused_attention=True,
        gradient_checkpointing=False,
        skip_padding=False,
        dtype=None,
        **kwargs,
    ):
        # === Layers ===
        embeddings = BertEmbeddings(
            vocabulary_size=vocabulary_size,
            hidden_dim=hidden_dim,
            max_sequence_length=max_sequence_length,
            type_vocabulary_size=type_vocabulary_size,
            dropout=dropout,
            layer_norm_epsilon=layer_norm_epsilon,
            initializer_range=initializer_range,
            dtype=dtype,
            name="embeddings",
        )
        encoder_layers = [
            BertEncoderBlock(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                dropout=dropout,
                attention_dropout=attention_dropout,
                layer_norm_epsilon=layer_norm_epsilon,
                initializer_range=initializer_range,
                use_fused_attention=use_fused_attention,
                gradient_checkpointing=gradient_checkpointing,
                dtype=dtype,
                name=f"encoder_layer_{i}",
            )
            for i in range(num_layers)
        ]
        pooler = BertPooler(
            initializer_range=initializer_range, dtype=dtype, name="pooler"
        )

        # === Functional model ===
        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in BACKBONE_INPUTS
        }
        outputs = _encode(inputs, embeddings, encoder_layers, pooler,
                          output_hidden_states, output_attentions)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.type_vocabulary_size = type_vocabulary_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.output_hidden_states = output_hidden_states
        self.output_attentions = output_attentions
        self.use_fused_attention = use_fused_attention
        self.embeddings = embeddings
        self.encoder_layers = encoder_layers
        self._gradient_checkpointing = bool(gradient_checkpointing)
        self.skip_padding = bool(skip_padding)
        self.pooler = pooler

    @property
    def token_embedding(self):
        """The token embedding layer (shared with the masked-LM head)."""
        return self.embeddings.token_embedding

    def _wire(self, inputs, training=None):
        return _encode(inputs, self.embeddings, self.encoder_layers, self.pooler,
                       self.output_hidden_states, self.output_attentions, training,
                       self.skip_padding)

    def encode_positions(self, inputs, positions=None, training=None):
        """Last-layer hidden states at `positions` only, `(batch, P, hidden)`.

        The same numbers as `self(inputs)["sequence_output"]` taken at
        `positions`, for less work: every layer but the last runs on all
        positions (they are the last layer's keys and values); the last one
        computes queries, attention output and feed-forward at the P positions
        alone. On a 4-layer model that is a fifth of the matrix multiplies.
        Heads that read a few positions build on it: the [CLS] classifier and
        the masked-LM + NSP pretraining heads. Works on symbolic inputs (to
        build a functional model) and on real tensors.

        Args:
            inputs: the backbone's input dict.
            positions: int `(batch, P)` indices into the sequence; None for
                the [CLS] token alone (P = 1).
            training: passed to the layers (None: the calling model's).
        """
        x = call_layer(self.embeddings, inputs["token_ids"], inputs["segment_ids"],
                       training=training)
        if not self.encoder_layers:
            return _take_positions(x, positions)
        packed = (PackedTokens.of(inputs["padding_mask"], x)
                  if self.skip_padding and len(self.encoder_layers) > 1 else None)
        if packed is not None:
            x = packed.pack(x)  # (tokens, hidden)
        for layer in self.encoder_layers[:-1]:
            x = _call_block(layer, x, inputs, packed, training)
        if packed is not None:
            x = packed.unpack(x)  # the last layer's keys and values, padded
        return call_layer(self.encoder_layers[-1], x, padding_mask=inputs["padding_mask"],
                          query=_take_positions(x, positions), training=training)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "max_sequence_length": self.max_sequence_length,
            "type_vocabulary_size": self.type_vocabulary_size,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": self.initializer_range,
            "output_hidden_states": self.output_hidden_states,
            "output_attentions": self.output_attentions,
            "use_fused_attention": self.use_fused_attention,
            "gradient_checkpointing": self.gradient_checkpointing,
            "skip_padding": self.skip_padding,
            "dtype": keras.dtype_policies.serialize(self.embeddings.dtype_policy),
        }

    @property
    def gradient_checkpointing(self):
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value):
        self._gradient_checkpointing = bool(value)
        for layer in self.encoder_layers:
            layer.gradient_checkpointing = bool(value)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    def architecture_config(self):
        """The constructor arguments that define the weights' shapes and math
        (no names, no output switches): what a saved folder records."""
        config = self.get_config()
        for key in ("name", "trainable", "output_hidden_states", "output_attentions",
                    "use_fused_attention", "gradient_checkpointing", "skip_padding", "dtype"):
            config.pop(key)
        return config

    # === Constructors ===
    @classmethod
    def from_preset(cls, name, **overrides):
        """A randomly initialised backbone of the architecture preset `name`
        (tiny, mini, small, medium, base, large); `overrides` replace any
        field, e.g. `vocabulary_size=8000`."""
        config = preset_config(name)
        config.update(overrides)
        return cls(**config)

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Load pretrained weights from a folder: Hugging Face, Google's
        original TF checkpoint, a keras-hub preset, or a bertdesk folder."""
        from bertdesk.io import load_backbone

        return load_backbone(path, **overrides)
