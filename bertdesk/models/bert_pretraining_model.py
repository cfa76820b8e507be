"""BERT with its pretraining heads: masked LM (tied) and next sentence."""

import keras
from keras import ops

from bertdesk.layers.bert_masked_lm_head import BertMaskedLMHead
from bertdesk.layers.bert_nsp_head import BertNSPHead
from bertdesk.layers.eager_calls import call_layer
from bertdesk.models.bert_backbone import BACKBONE_INPUTS, BackboneAsOneLayer
from bertdesk.models.builds_optimizer_first import BuildsOptimizerFirst
from bertdesk.models.releases_gradients import ReleasesGradients
from bertdesk.models.runs_graph_directly import RunsGraphDirectly
from bertdesk.models.saves_float_only import SavesFloatOnly


# === Model ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertPretrainingModel(SavesFloatOnly, BuildsOptimizerFirst, ReleasesGradients,
                           BackboneAsOneLayer, RunsGraphDirectly, keras.Model):
    """Backbone + masked-LM head (output weights tied to the token embedding,
    logits only at `mask_positions`) + next-sentence head.

    Inputs: the backbone's dict plus `mask_positions` `(batch, num_masked)`.
    Outputs: `mlm_logits` `(batch, num_masked, vocab)` and `nsp_logits`
    `(batch, 2)`, both float32.
    """

    def __init__(self, backbone, **kwargs):
        # === Layers ===
        mlm_head = BertMaskedLMHead(
            token_embedding=backbone.token_embedding,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            initializer_range=backbone.initializer_range,
            dtype=backbone.embeddings.dtype_policy,
            name="mlm_head",
        )
        nsp_head = BertNSPHead(
            initializer_range=backbone.initializer_range,
            dtype=backbone.embeddings.dtype_policy,
            name="nsp_head",
        )

        # === Functional model ===
        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in BACKBONE_INPUTS + ("mask_positions",)
        }
        self._show_backbone_as_one_layer(backbone)
        outputs = _pretraining_heads(inputs, backbone, mlm_head, nsp_head)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.mlm_head = mlm_head
        self.nsp_head = nsp_head

    def _wire(self, inputs, training=None):
        return _pretraining_heads(inputs, self.backbone, self.mlm_head, self.nsp_head, training)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)

    @classmethod
    def from_pretrained(cls, folder, **overrides):
        """Backbone and, when the checkpoint has them, MLM and NSP head
        weights; heads absent from the checkpoint stay randomly initialised.
        `CheckpointError` for part of a head, or a masked-LM decoder not tied
        to the token embedding (`io.mapping.head_in`)."""
        from bertdesk.io import load_backbone, read_checkpoint
        from bertdesk.io.mapping import (MLM_NAMES, NSP_NAMES, assign_mlm_head,
                                         assign_nsp_head, head_in)

        ckpt = read_checkpoint(folder)
        mlm = head_in(ckpt.tensors, MLM_NAMES, ckpt.weights_file)
        nsp = head_in(ckpt.tensors, NSP_NAMES, ckpt.weights_file)
        model = cls(load_backbone(folder, **overrides))
        if mlm:
            assign_mlm_head(model.mlm_head, ckpt.tensors)
        if nsp:
            assign_nsp_head(model.nsp_head, ckpt.tensors)
        return model

    def head_tensors(self):
        """MLM and NSP head weights under their canonical names."""
        from bertdesk.io.mapping import mlm_head_tensors, nsp_head_tensors

        return {**mlm_head_tensors(self.mlm_head), **nsp_head_tensors(self.nsp_head)}


def _pretraining_heads(inputs, backbone, mlm_head, nsp_head, training=None):
    """The pretraining outputs: the model's graph, and what it runs on PyTorch."""
    # The heads read [CLS] and the masked positions only: the last layer
    # runs at those positions alone.
    positions = ops.concatenate(
        [ops.zeros_like(inputs["mask_positions"][:, :1]), inputs["mask_positions"]], axis=1
    )
    states = backbone.encode_positions(
        {name: inputs[name] for name in BACKBONE_INPUTS}, positions, training=training
    )  # (batch, 1 + num_masked, hidden)
    return {
        "mlm_logits": call_layer(mlm_head, states[:, 1:, :], training=training),
        "nsp_logits": call_layer(nsp_head, call_layer(backbone.pooler, states),
                                 training=training),
    }
