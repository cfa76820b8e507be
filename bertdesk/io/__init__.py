"""Import and export of BERT checkpoints.

    backbone = bertdesk.io.load_backbone("path/to/folder")   # any format
    bertdesk.io.save_pretrained(backbone, "out", tokenizer, format="hf")
"""

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from bertdesk.io.atomic import atomic_write_text
from bertdesk.io.errors import CheckpointError
from bertdesk.io.formats import (FORMATS, READERS, Checkpoint, config_to_hf,
                                 detect_format)
from bertdesk.io.mapping import (MLM_NAMES, NSP_NAMES, POOLER_NAMES, TASK_HEAD_PREFIXES,
                                 assign_backbone, backbone_tensors, build_without_values,
                                 initialized_at_the_end, kept_open, validate)
from bertdesk.io.safetensors_writer import save_safetensors

__all__ = ["Checkpoint", "CheckpointError", "convert", "detect_format", "load_backbone",
           "load_tokenizer", "read_checkpoint", "save_pretrained"]


def read_checkpoint(folder, format=None):
    """Read a checkpoint folder, validated against its config (safetensors,
    PyTorch zip and Google TF files from what they say of their tensors:
    each tensor is read when it is used, see `formats.LazyTensors`).

    Raises `CheckpointError` naming the file and tensor on any mismatch;
    nothing is assigned to any model here.
    """
    folder = Path(folder)
    format = format or detect_format(folder)
    if format not in READERS:
        raise CheckpointError(f"unknown checkpoint format {format!r}; expected one of {FORMATS}")
    ckpt = READERS[format](folder)
    missing_optional, task_heads = validate(ckpt.tensors, ckpt.config, ckpt.weights_file)
    if missing_optional:
        warnings.warn(
            f"{ckpt.weights_file}: no pooler weights ({', '.join(missing_optional)}); "
            "the pooler keeps its random initialisation",
            stacklevel=2,
        )
    ckpt.metadata["task_heads"] = sorted(task_heads)
    if ckpt.vocab_file is not None:
        from bertdesk.tokenizer import read_vocab

        n = len(read_vocab(ckpt.vocab_file))
        if n != ckpt.config["vocabulary_size"]:
            raise CheckpointError(
                f"{ckpt.vocab_file}: {n} tokens, but the model's token embedding "
                f"'embeddings.word_embeddings.weight' has {ckpt.config['vocabulary_size']} rows"
            )
    return ckpt


def load_backbone(folder, format=None, **overrides):
    """A `BertBackbone` with the weights of the checkpoint in `folder`.

    `overrides` set non-architecture options such as `dropout`, `dtype`,
    `output_attentions`; architecture fields must agree with the checkpoint.
    """
    from bertdesk.models.bert_backbone import BertBackbone

    ckpt = read_checkpoint(folder, format)
    config = dict(ckpt.config)
    for key, value in overrides.items():
        if key in config and config[key] != value and key not in (
                "dropout", "attention_dropout", "initializer_range"):
            raise CheckpointError(
                f"{ckpt.folder}: the checkpoint has {key}={config[key]}, cannot load it as {value}"
            )
        config[key] = value
    backbone = build_without_values(lambda: BertBackbone(**config))
    with initialized_at_the_end(backbone), kept_open(ckpt.tensors):
        assign_backbone(backbone, ckpt.tensors)
    backbone.checkpoint = ckpt.folder
    return backbone


def load_tokenizer(folder):
    """The `BertTokenizer` stored with a checkpoint."""
    from bertdesk.tokenizer import BertTokenizer

    return BertTokenizer.from_pretrained(folder)


def save_pretrained(backbone, folder, tokenizer=None, format="bertdesk", extra_tensors=None,
                    overwrite=False, config_overrides=None, hf_architecture=None,
                    hf_config=None):
    """Write `backbone` (and its tokenizer) as a checkpoint folder.

    format "bertdesk": bertdesk.json + model.safetensors + vocab.txt.
    format "hf": config.json + model.safetensors + vocab.txt, loadable by
    transformers' `BertModel.from_pretrained` (or `BertForPreTraining` when
    `extra_tensors` hold the MLM and NSP heads).

    The folder is assembled next to its destination and moved in place; an
    existing folder is only touched with `overwrite=True`, file by file,
    each replaced atomically, and the files of the model it held that these
    do not replace removed (`_model_files`: another format's config, other
    weights, a fast tokenizer's files); other files stay. `config_overrides`
    replace entries of the saved architecture config (e.g. the dropout rates
    a fine-tuning run should use when the backbone was trained with others).
    `hf_architecture` and
    `hf_config` (format "hf") name a task class of transformers whose head
    is in `extra_tensors` (`classifier.*`, `qa_outputs.*`) and add its config
    entries (`id2label`, ...).
    """
    if format not in ("bertdesk", "hf"):
        raise ValueError(f"format must be 'bertdesk' or 'hf', got {format!r}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder}: folder exists and is not empty (use overwrite=True)")
    tensors = backbone_tensors(backbone)
    tensors.update(extra_tensors or {})
    config = backbone.architecture_config()
    unknown = set(config_overrides or {}) - set(config)
    if unknown:
        raise ValueError(f"config_overrides: unknown keys {sorted(unknown)}")
    config.update(config_overrides or {})
    heads = all(n in tensors for n in MLM_NAMES + NSP_NAMES)
    task_head = any(k.startswith(TASK_HEAD_PREFIXES) for k in tensors)
    if task_head and (format != "hf" or hf_architecture is None):
        raise ValueError("task head tensors are written only with format='hf' and the "
                         "hf_architecture they belong to")
    if hf_architecture in ("BertForTokenClassification", "BertForQuestionAnswering"):
        # these heads read every position, and their transformers classes have no pooler
        tensors = {k: v for k, v in tensors.items() if k not in POOLER_NAMES}
    if format == "hf" and (heads or task_head):
        # transformers' Bert*For* layout: the backbone under `bert.`
        keep = ("cls.",) + TASK_HEAD_PREFIXES
        tensors = {(k if k.startswith(keep) else "bert." + k): v for k, v in tensors.items()}
    if format == "hf" and heads:
        # and BertForPreTraining's explicit copies of the tied decoder weights
        # (written from the same arrays: no copy needed)
        tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
        tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        save_safetensors(staging / "model.safetensors", tensors)
        if tokenizer is not None:
            tokenizer.save(staging)
        if format == "hf":
            hf = config_to_hf(config, [hf_architecture] if hf_architecture else
                              ["BertForPreTraining"] if heads else ["BertModel"])
            hf.update(hf_config or {})
            atomic_write_text(staging / "config.json", json.dumps(hf, indent=2))
        else:
            meta = {"format": "bertdesk", "version": 1, "backbone": config}
            if tokenizer is not None:
                meta["tokenizer"] = {"lowercase": tokenizer.lowercase,
                                     "strip_accents": tokenizer.strip_accents}
            atomic_write_text(staging / "bertdesk.json", json.dumps(meta, indent=2))
        if not folder.exists():
            os.rename(staging, folder)
        else:
            written = {item.name for item in staging.iterdir()}
            # the model files of any format that this one does not replace go
            # first (a reader would pair them with the new files), the new
            # descriptor last: a stop in between leaves no model, never a mix
            for stale in _model_files(folder):
                if stale.name not in written:
                    stale.unlink()
            descriptor = "config.json" if format == "hf" else "bertdesk.json"
            for name in sorted(written, key=lambda name: name == descriptor):
                os.replace(staging / name, folder / name)
            staging.rmdir()
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


# The files a checkpoint reader or transformers consults in a model folder
# (configs, weights of every format, tokenizer files)
_MODEL_FILE_NAMES = {
    "bertdesk.json", "config.json", "bert_config.json", "model.safetensors",
    "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
    "tf_model.h5", "flax_model.msgpack", "vocab.txt", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "checkpoint"}
_MODEL_FILE_PATTERNS = ("bert_model.ckpt*", "model-*-of-*.safetensors",
                        "pytorch_model-*-of-*.bin")


def _model_files(folder):
    """The model files in `folder`, by name (files, or links: a link goes, not
    what it points to)."""
    found = {p for p in folder.iterdir() if p.name in _MODEL_FILE_NAMES}
    for pattern in _MODEL_FILE_PATTERNS:
        found.update(folder.glob(pattern))
    return sorted(p for p in found if p.is_symlink() or p.is_file())


def convert(src, dst, to="bertdesk", overwrite=False):
    """Convert the checkpoint folder `src` to format `to` ("hf" or "bertdesk")
    in `dst`, heads (MLM, NSP) included when present. A fine-tuned model
    folder (`bertdesk finetune`'s `model/`) becomes, in format "hf", the
    transformers task model of its task, head, labels and all."""
    import keras  # noqa: F401  (a backend is needed to build the model)

    ckpt = read_checkpoint(src)
    backbone = load_backbone(src)
    # (by name first: a lazily read checkpoint reads only these)
    extra = {k: ckpt.tensors[k] for k in ckpt.tensors if k in MLM_NAMES + NSP_NAMES}
    architecture = hf_config = None
    if to == "hf" and ckpt.format == "bertdesk" and ckpt.metadata.get("task"):
        from bertdesk.tasks.saving import hf_task_config

        architecture, hf_config = hf_task_config(ckpt.metadata, ckpt.folder / "bertdesk.json")
        extra.update({k: ckpt.tensors[k] for k in ckpt.tensors
                      if k.startswith(TASK_HEAD_PREFIXES)})
    tokenizer = load_tokenizer(src) if ckpt.vocab_file is not None else None
    return save_pretrained(backbone, dst, tokenizer=tokenizer, format=to,
                           extra_tensors=extra, overwrite=overwrite,
                           hf_architecture=architecture, hf_config=hf_config)
