"""BERT models built from `bertdesk.layers`."""

from bertdesk.models.bert_backbone import BertBackbone, preset_config, preset_names

__all__ = ["BertBackbone", "preset_config", "preset_names"]
