"""Fine-tuned model folders: config, weights, tokenizer, labels, arguments.

    folder/bertdesk.json      format, task, backbone config, head, training args
    folder/model.safetensors  backbone + head under transformers' names
    folder/vocab.txt, tokenizer_config.json

`bertdesk convert --to hf` writes one as the transformers task model
(`BertForSequenceClassification`, `BertForTokenClassification`,
`BertForQuestionAnswering`); `load_model` reads those too, whoever trained
them.
"""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertdesk.io import read_checkpoint
from bertdesk.io.atomic import atomic_write_text
from bertdesk.io.errors import CheckpointError
from bertdesk.io.formats import read_json
from bertdesk.io.mapping import tensor_shape

TASKS = ("classify", "ner", "qa")
# what each task reads from bertdesk.json's "head" (training/tasks.py's make_head)
HEAD_FIELDS = {"classify": ("problem_type", "num_classes", "labels"),
               "ner": ("num_classes", "labels"),
               "qa": ("doc_stride", "max_answer_length")}
# transformers' task classes, and their problem types
HF_ARCHITECTURES = {"classify": "BertForSequenceClassification",
                    "ner": "BertForTokenClassification", "qa": "BertForQuestionAnswering"}
HF_PROBLEM_TYPES = {"single_label": "single_label_classification",
                    "multi_label": "multi_label_classification", "regression": "regression"}
# what a transformers config keeps of bertdesk.json (its unknown keys are kept)
# How the model reads its data, kept in a transformers export's config.json:
# `evaluate` and `predict` read a table the way the model was trained to
HF_KEPT_ARGS = ("max_length", "format", "text_column", "text_pair_column", "label_column",
                "label_separator")


# The files `save_task_model` writes (moved in one by one: a run stopped among
# them leaves some)
TASK_MODEL_FILES = frozenset({"model.safetensors", "bertdesk.json", "vocab.txt",
                              "tokenizer_config.json"})


def save_task_model(model, folder, tokenizer, task, head_config, training_args=None,
                    overwrite=False, without=()):
    """Write a fine-tuned model folder (`io.write_model_folder`: assembled
    beside `folder` and moved in; over an existing folder only with
    `overwrite`, the old model's descriptor gone before any new file moves
    in). `without` names canonical tensors to leave out (a pooler the
    model's checkpoint never had)."""
    from bertdesk.io import write_model_folder
    from bertdesk.io.mapping import backbone_tensors, refuse_quantized
    from bertdesk.io.safetensors_writer import save_safetensors

    refuse_quantized(model)
    tensors = {**backbone_tensors(model.backbone), **model.head_tensors()}
    tensors = {k: np.asarray(v, np.float32) for k, v in tensors.items() if k not in without}
    meta = {"format": "bertdesk", "version": 1, "task": task,
            "backbone": model.backbone.architecture_config(),
            "tokenizer": {"lowercase": tokenizer.lowercase,
                          "strip_accents": tokenizer.strip_accents},
            "head": head_config, "training_args": training_args or {}}

    def write(staging):
        save_safetensors(staging / "model.safetensors", tensors)
        tokenizer.save(staging)
        atomic_write_text(staging / "bertdesk.json", json.dumps(meta, indent=2))

    return write_model_folder(folder, write, overwrite)


def assign_classifier(model, tensors, source):
    """Assign the head: `classifier.weight` (classes, hidden) and
    `classifier.bias`, or `qa_outputs.*` for a span model."""
    prefix = next(iter(model.head_tensors())).split(".")[0]
    expected = {f"{prefix}.weight": (model.num_classes, model.backbone.hidden_dim),
                f"{prefix}.bias": (model.num_classes,)}
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{source}: missing tensor {name!r}")
        if tensor_shape(tensors, name) != shape:
            raise CheckpointError(f"{source}: tensor {name!r} has shape "
                                  f"{tensor_shape(tensors, name)}, expected {shape}")
    model.classifier.kernel.assign(tensors[f"{prefix}.weight"].T)
    model.classifier.bias.assign(tensors[f"{prefix}.bias"])


def hf_task_config(meta, source):
    """(architecture, config entries) of the transformers task model for a
    fine-tuned folder's `bertdesk.json` contents: labels as `id2label` /
    `label2id`, the problem type, and bertdesk's own head and arguments
    under `bertdesk` (transformers keeps unknown keys), so that reading the
    export back loses nothing."""
    task, head = meta.get("task"), meta.get("head") or {}
    if task not in TASKS:
        raise CheckpointError(f"{source}: no fine-tuned task (task={task!r})")
    config = {"bertdesk": {"task": task, "head": head, "training_args": {
        k: v for k, v in (meta.get("training_args") or {}).items() if k in HF_KEPT_ARGS}}}
    if task in ("classify", "ner"):
        labels = head.get("labels") or [f"LABEL_{i}" for i in range(head["num_classes"])]
        config["id2label"] = {str(i): str(label) for i, label in enumerate(labels)}
        config["label2id"] = {str(label): i for i, label in enumerate(labels)}
    if task == "classify":
        config["problem_type"] = HF_PROBLEM_TYPES[head["problem_type"]]
    return HF_ARCHITECTURES[task], config


def _meta_from_hf(folder):
    """bertdesk.json's contents for a transformers task folder (config.json
    naming a `BertFor...` task class): the labels from `id2label`, the
    problem type, and the lengths transformers' pipelines use (512 tokens,
    384 with a stride of 128 for QA); a folder bertdesk exported carries
    its own head and arguments."""
    path = folder / "config.json"
    hf = read_json(path)
    names = hf.get("architectures") or []
    by_class = {v: k for k, v in HF_ARCHITECTURES.items()}
    task = next((by_class[n] for n in names if n in by_class), None)
    if task is None:
        raise CheckpointError(
            f"{path}: architectures {names} holds no fine-tuned task; expected one of "
            f"{', '.join(HF_ARCHITECTURES.values())} (or a bertdesk.json from "
            "`bertdesk finetune`)")
    own = hf.get("bertdesk") or {}
    if own.get("task") == task and own.get("head"):
        return {"task": task, "head": own["head"],
                "training_args": own.get("training_args") or {}}
    positions = int(hf.get("max_position_embeddings", 512))
    if task == "qa":
        return {"task": task, "head": {
            "problem_type": "extractive_qa", "num_classes": 2, "labels": None,
            "version": "1.1", "null_threshold": None, "doc_stride": 128,
            "max_answer_length": 30}, "training_args": {"max_length": min(384, positions)}}
    id2label = hf.get("id2label") or {str(i): f"LABEL_{i}"
                                       for i in range(int(hf.get("num_labels", 2)))}
    try:
        labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except ValueError:
        raise CheckpointError(f"{path}: id2label keys must be class numbers, got "
                              f"{sorted(id2label)}") from None
    head = {"num_classes": len(labels), "labels": labels}
    if task == "classify":
        by_hf = {v: k for k, v in HF_PROBLEM_TYPES.items()}
        problem = hf.get("problem_type") or ("regression" if len(labels) == 1
                                             else "single_label_classification")
        if problem not in by_hf:
            raise CheckpointError(f"{path}: problem_type {problem!r}; expected one of "
                                  f"{', '.join(by_hf)}")
        head["problem_type"] = by_hf[problem]
        if head["problem_type"] == "regression":
            head["labels"] = None
    return {"task": task, "head": head, "training_args": {"max_length": min(512, positions)}}


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
    """Restore a fine-tuned model folder written by `bertdesk finetune`, or
    a transformers task model folder (`BertForSequenceClassification`,
    `BertForTokenClassification`, `BertForQuestionAnswering`)."""
    from bertdesk.io import load_backbone, load_tokenizer
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier
    from bertdesk.tasks.bert_question_answerer import BertQuestionAnswerer
    from bertdesk.tasks.bert_token_classifier import BertTokenClassifier

    folder = Path(folder)
    meta_path = folder / "bertdesk.json"
    if not meta_path.is_file() and (folder / "config.json").is_file():
        meta_path = folder / "config.json"
        meta = _meta_from_hf(folder)
    else:
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
    with warnings.catch_warnings():
        if task in ("ner", "qa"):  # their heads never read the pooler, which
            # transformers' token and span classes do not have
            warnings.filterwarnings("ignore", message=".*no pooler weights")
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
