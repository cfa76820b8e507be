"""BERT models built from `bertdesk.layers`."""

from bertdesk.models.bert_backbone import BertBackbone, preset_config, preset_names
from bertdesk.models.bert_pretraining_model import BertPretrainingModel

__all__ = ["BertBackbone", "BertPretrainingModel", "preset_config", "preset_names"]
