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
                                 head_in, initialized_at_the_end, kept_open, read_tied_bias,
                                 validate)
from bertdesk.io.safetensors_writer import save_safetensors
from bertdesk.io.writers import write_google, write_keras_hub

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
    read_tied_bias(ckpt.tensors)
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
                    hf_config=None, without=()):
    """Write `backbone` (and its tokenizer) as a checkpoint folder.

    format "bertdesk": bertdesk.json + model.safetensors + vocab.txt.
    format "hf": config.json + model.safetensors + vocab.txt, loadable by
    transformers' `BertModel.from_pretrained`, or, where `extra_tensors`
    hold pretraining heads, by the class they belong to
    (`BertForPreTraining` for both, `BertForMaskedLM`,
    `BertForNextSentencePrediction`).
    format "google": bert_config.json + bert_model.ckpt.* + vocab.txt, as
    Google released BERT (heads under `cls/`), read by TensorFlow's
    `tf.train.load_checkpoint` and google-research/bert.
    format "keras_hub": a keras-hub `BertBackbone` preset (with the
    tokenizer, its `BertTokenizer`), loaded by keras-hub's `from_preset`;
    a backbone preset holds no heads, and is written into a new or empty
    folder only.

    The folder is written by `write_model_folder` (assembled beside its
    destination and moved in; an existing folder only with `overwrite`).
    `config_overrides` replace entries of the saved architecture config
    (e.g. the dropout rates a fine-tuning run should use when the backbone
    was trained with others). `hf_architecture` and `hf_config` (format
    "hf") name a task class of transformers whose head is in
    `extra_tensors` (`classifier.*`, `qa_outputs.*`) and add its config
    entries (`id2label`, ...). `without` names canonical tensors to leave
    out (the pooler of a checkpoint that had none: written, it would be
    read back as trained weights).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "keras_hub" and (extra_tensors or without):
        raise ValueError("a keras-hub BertBackbone preset holds the backbone alone, pooler "
                         "included: no heads, nothing left out")
    if format == "keras_hub" and overwrite and Path(folder).exists() and any(
            Path(folder).iterdir()):
        raise FileExistsError(f"{folder}: a keras-hub preset is written into a new or empty "
                              "folder (it cannot be replaced file by file)")
    tensors = backbone_tensors(backbone)
    tensors.update(extra_tensors or {})
    config = backbone.architecture_config()
    unknown = set(config_overrides or {}) - set(config)
    if unknown:
        raise ValueError(f"config_overrides: unknown keys {sorted(unknown)}")
    config.update(config_overrides or {})
    mlm, nsp = (all(n in tensors for n in names) for names in (MLM_NAMES, NSP_NAMES))
    task_head = any(k.startswith(TASK_HEAD_PREFIXES) for k in tensors)
    if task_head and (format != "hf" or hf_architecture is None):
        raise ValueError("task head tensors are written only with format='hf' and the "
                         "hf_architecture they belong to")
    if format == "hf" and hf_architecture is None and (mlm or nsp):
        hf_architecture = ("BertForPreTraining" if mlm and nsp else
                           "BertForMaskedLM" if mlm else "BertForNextSentencePrediction")
    if hf_architecture in NO_POOLER:
        without = (*without, *POOLER_NAMES)  # these transformers classes have none
    tensors = {k: v for k, v in tensors.items() if k not in without}
    if format == "hf" and hf_architecture is not None:
        # transformers' Bert*For* layout: the backbone under `bert.`
        keep = ("cls.",) + TASK_HEAD_PREFIXES
        tensors = {(k if k.startswith(keep) else "bert." + k): v for k, v in tensors.items()}
    if format == "hf" and mlm:
        # and the explicit copies of the tied decoder weights (written from
        # the same arrays: no copy needed)
        tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
        tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]

    def write(staging):
        if format == "keras_hub":
            return write_keras_hub(staging, config, tensors, tokenizer)
        if tokenizer is not None:
            tokenizer.save(staging)
        if format == "google":
            return write_google(staging, config, tensors)
        save_safetensors(staging / "model.safetensors", tensors)
        if format == "hf":
            hf = config_to_hf(config, [hf_architecture or "BertModel"])
            hf.update(hf_config or {})
            atomic_write_text(staging / "config.json", json.dumps(hf, indent=2))
        else:
            meta = {"format": "bertdesk", "version": 1, "backbone": config}
            if tokenizer is not None:
                meta["tokenizer"] = {"lowercase": tokenizer.lowercase,
                                     "strip_accents": tokenizer.strip_accents}
            atomic_write_text(staging / "bertdesk.json", json.dumps(meta, indent=2))

    return write_model_folder(folder, write, overwrite)


# transformers' classes for BERT whose models have no pooler
NO_POOLER = ("BertForMaskedLM", "BertForTokenClassification", "BertForQuestionAnswering")


def write_model_folder(folder, write, overwrite=False):
    """Write a model folder: `write(staging)` fills a new folder beside
    `folder`, which is then renamed into place whole. With `overwrite`, an
    existing folder gets the new files one by one, each replaced
    atomically: first the model files it holds that the new ones do not
    replace (`_model_files`: another format's config, other weights, a
    fast tokenizer's files) and its descriptors (the config files a reader
    starts from) go, then the new files move in, the new descriptor last;
    a stop in between leaves no model, never new weights read with an old
    config or labels. Other files (the user's) stay. Returns `folder`.
    FileExistsError for a folder that is not empty, without `overwrite`."""
    folder = Path(folder)
    if not overwrite and folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder}: folder exists and is not empty (use overwrite=True)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial",
                                    dir=folder.parent))
    try:
        write(staging)
        if not folder.exists():
            os.rename(staging, folder)
            return folder
        written = {item.name for item in staging.iterdir()}
        for stale in _model_files(folder):
            if stale.name not in written or stale.name in _DESCRIPTORS:
                stale.unlink()
        for name in sorted(written, key=lambda name: name in _DESCRIPTORS):
            os.replace(staging / name, folder / name)
        staging.rmdir()
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


# The files a reader starts from (`formats.detect_format`)
_DESCRIPTORS = {"bertdesk.json", "config.json", "bert_config.json"}

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
    """Convert the checkpoint folder `src` to format `to` (one of `FORMATS`:
    "bertdesk", "hf", "google", "keras_hub") in `dst`, heads (MLM, NSP)
    included when present (a keras-hub backbone preset has none: they are
    left out, with a warning). A fine-tuned model (`bertdesk finetune`'s
    `model/`, or a transformers task model folder:
    `BertForSequenceClassification`, `BertForTokenClassification`,
    `BertForQuestionAnswering`) stays one, head, labels and all: in format
    "hf" the transformers task model of its task, in format "bertdesk" the
    folder `bertdesk finetune` writes (the other two formats hold no task
    model: refused). A pooler the source did not have is not written."""
    import keras  # noqa: F401  (a backend is needed to build the model)

    if to not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {to!r}")
    ckpt = read_checkpoint(src)
    without = () if all(n in ckpt.tensors for n in POOLER_NAMES) else POOLER_NAMES
    if ckpt.format == "google" and ckpt.metadata["task_heads"]:
        # run_classifier.py / run_squad.py record no labels or task settings:
        # no fine-tuned model to make of the head
        warnings.warn(f"{src}: the fine-tuned head ({', '.join(ckpt.metadata['task_heads'])}) "
                      "is left out: a Google checkpoint records no labels or task settings; "
                      "the backbone is converted", stacklevel=2)
    elif ckpt.metadata["task_heads"] or ckpt.metadata.get("task"):
        if to not in ("bertdesk", "hf"):
            raise CheckpointError(f"{src}: a fine-tuned model converts to bertdesk or hf (a "
                                  f"{to} folder holds no task model); convert its backbone "
                                  "from the checkpoint it was fine-tuned from")
        return _convert_task_model(ckpt, dst, to, overwrite, without)
    backbone = load_backbone(src)
    extra = {}
    for names in (MLM_NAMES, NSP_NAMES):
        if head_in(ckpt.tensors, names, ckpt.weights_file):
            extra.update({name: ckpt.tensors[name] for name in names})
    if to == "keras_hub" and (extra or without):
        warnings.warn(f"{src}: a keras-hub BertBackbone preset holds the backbone alone"
                      + (": the masked-LM / next-sentence heads are left out" if extra else "")
                      + ("; the source has no pooler, so the preset's is a random initial one"
                         if without else ""), stacklevel=2)
        extra, without = {}, ()
    tokenizer = load_tokenizer(src) if ckpt.vocab_file is not None else None
    return save_pretrained(backbone, dst, tokenizer=tokenizer, format=to,
                           extra_tensors=extra, overwrite=overwrite, without=without)


def _convert_task_model(ckpt, dst, to, overwrite, without):
    from bertdesk.tasks.saving import hf_task_config, load_model, save_task_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no pooler weights")  # (read already)
        tuned = load_model(ckpt.folder)
    if to == "bertdesk":
        return save_task_model(tuned.model, dst, tuned.tokenizer, tuned.task, tuned.head,
                               tuned.meta.get("training_args"), overwrite=overwrite,
                               without=without)
    source = ckpt.folder / ("bertdesk.json" if ckpt.format == "bertdesk" else "config.json")
    architecture, hf_config = hf_task_config(tuned.meta, source)
    return save_pretrained(tuned.model.backbone, dst, tokenizer=tuned.tokenizer, format="hf",
                           extra_tensors=tuned.model.head_tensors(), overwrite=overwrite,
                           hf_architecture=architecture, hf_config=hf_config,
                           without=without)
