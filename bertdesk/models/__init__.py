"""BERT models built from `bertdesk.layers`."""

from bertdesk.models.bert_backbone import BertBackbone, preset_config, preset_names
from bertdesk.models.bert_pretraining_model import BertPretrainingModel
from bertdesk.models.builds_optimizer_first import BuildsOptimizerFirst
from bertdesk.models.releases_gradients import ReleasesGradients

__all__ = ["BertBackbone", "BertPretrainingModel", "BuildsOptimizerFirst", "ReleasesGradients",
           "preset_config", "preset_names"]
