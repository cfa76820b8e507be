"""Fine-tuned model folders: config, weights, tokenizer, labels, arguments.

    folder/bertdesk.json      format, task, backbone config, head, training args
    folder/model.safetensors  backbone + head under transformers' names
    folder/vocab.txt, tokenizer_config.json
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdesk.io import read_checkpoint
from bertdesk.io.atomic import atomic_write_bytes, atomic_write_text
from bertdesk.io.errors import CheckpointError
from bertdesk.io.formats import read_json

TASKS = ("classify", "ner", "qa")
# what each task reads from bertdesk.json's "head" (training/tasks.py's make_head)
HEAD_FIELDS = {"classify": ("problem_type", "num_classes", "labels"),
               "ner": ("num_classes", "labels"),
               "qa": ("doc_stride", "max_answer_length")}


def save_task_model(model, folder, tokenizer, task, head_config, training_args=None,
                    overwrite=False):
    """Write a fine-tuned model folder; assembled beside `folder`, then moved
    in (or, with `overwrite`, each file replaced atomically)."""
    from safetensors.numpy import save

    from bertdesk.io.mapping import backbone_tensors

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder}: folder exists and is not empty")
    tensors = {**backbone_tensors(model.backbone), **model.head_tensors()}
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    meta = {"format": "bertdesk", "version": 1, "task": task,
            "backbone": model.backbone.architecture_config(),
            "tokenizer": {"lowercase": tokenizer.lowercase,
                          "strip_accents": tokenizer.strip_accents},
            "head": head_config, "training_args": training_args or {}}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial",
                                    dir=folder.parent))
    try:
        atomic_write_bytes(staging / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        tokenizer.save(staging)
        atomic_write_text(staging / "bertdesk.json", json.dumps(meta, indent=2))
        folder.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def assign_classifier(model, tensors, source):
    """Assign the head: `classifier.weight` (classes, hidden) and
    `classifier.bias`, or `qa_outputs.*` for a span model."""
    prefix = next(iter(model.head_tensors())).split(".")[0]
    expected = {f"{prefix}.weight": (model.num_classes, model.backbone.hidden_dim),
                f"{prefix}.bias": (model.num_classes,)}
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{source}: missing tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{source}: tensor {name!r} has shape "
                                  f"{tuple(tensors[name].shape)}, expected {shape}")
    model.classifier.kernel.assign(tensors[f"{prefix}.weight"].T)
    model.classifier.bias.assign(tensors[f"{prefix}.bias"])


@dataclass
class FineTunedModel:
    """A loaded fine-tuned model: Keras model, tokenizer and its metadata."""

    model: object
    tokenizer: object
    task: str
    head: dict
    meta: dict
    folder: Path

    @property
    def labels(self):
        return self.head.get("labels")

    @property
    def max_length(self):
        return int(self.meta.get("training_args", {}).get("max_length", 128))


def load_model(folder, **backbone_overrides):
    """Restore a fine-tuned model folder written by `bertdesk finetune`."""
    from bertdesk.io import load_backbone, load_tokenizer
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier
    from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer
    from bertdesk.tasks.bert_token_classifier import BertTokenClassifier

    folder = Path(folder)
    meta_path = folder / "bertdesk.json"
    meta = read_json(meta_path)
    task = meta.get("task")
    if task not in TASKS:
        raise CheckpointError(f"{meta_path}: no fine-tuned task in this folder "
                              f"(task={task!r}); expected one of {TASKS}")
    head = meta.get("head") or {}
    missing = [key for key in HEAD_FIELDS[task] if key not in head]
    if missing:
        raise CheckpointError(f"{meta_path}: the 'head' entry lacks "
                              f"{', '.join(map(repr, missing))} (a {task} model needs "
                              f"{', '.join(HEAD_FIELDS[task])})")
    ckpt = read_checkpoint(folder)
    backbone = load_backbone(folder, **backbone_overrides)
    if task == "qa":
        model = BertQuestionAnswerer(backbone)
    elif task == "ner":
        model = BertTokenClassifier(backbone, num_classes=head["num_classes"])
    else:
        model = BertTextClassifier(backbone, num_classes=head["num_classes"],
                                   problem_type=head["problem_type"])
    assign_classifier(model, ckpt.tensors, ckpt.weights_file)
    return FineTunedModel(model, load_tokenizer(folder), task, head, meta, folder)
