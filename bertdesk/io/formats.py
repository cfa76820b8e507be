"""Readers and writers for the checkpoint formats bertdesk understands.

Every reader returns a `Checkpoint` whose tensors use the canonical names of
`bertdesk.io.mapping`. Opening a checkpoint never runs code from it:
safetensors first, `torch.load(weights_only=True)` for `.bin` files, and
keras-hub presets are rebuilt from their JSON config by keras-hub itself.
"""

import contextlib
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertdesk.io.errors import CheckpointError
from bertdesk.io.mapping import canonical_name

# Hugging Face config key -> bertdesk backbone argument.
HF_CONFIG_KEYS = {
    "vocab_size": "vocabulary_size",
    "num_hidden_layers": "num_layers",
    "hidden_size": "hidden_dim",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_dim",
    "max_position_embeddings": "max_sequence_length",
    "type_vocab_size": "type_vocabulary_size",
    "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "layer_norm_eps": "layer_norm_epsilon",
    "initializer_range": "initializer_range",
}
FORMATS = ("bertdesk", "hf", "google", "keras_hub")


@dataclass
class Checkpoint:
    """A checkpoint read and checked, not yet assigned to any model."""

    format: str
    folder: Path
    config: dict  # BertBackbone architecture kwargs
    # canonical name -> numpy array (floats as float32): a dict, or for
    # safetensors and PyTorch zip files a `LazyTensors` that reads each on demand
    tensors: Mapping
    weights_file: Path
    vocab_file: Path | None = None
    lowercase: bool | None = None
    metadata: dict = field(default_factory=dict)


def read_json(path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # (a byte-order mark allowed)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def detect_format(folder):
    """Which format the folder holds: bertdesk, hf, google or keras_hub."""
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: expected a checkpoint folder, got a file")
    if (folder / "bertdesk.json").is_file():
        return "bertdesk"
    if (folder / "bert_config.json").is_file() or list(folder.glob("*.ckpt*.index")):
        return "google"
    if (folder / "config.json").is_file():
        config = read_json(folder / "config.json")
        module = str(config.get("module", "")) if isinstance(config, dict) else ""
        if "class_name" in config and module.startswith(("keras_hub", "keras_nlp")):
            return "keras_hub"  # (keras-nlp, keras-hub's former name, wrote presets too)
        return "hf"
    raise CheckpointError(
        f"{folder}: not a checkpoint folder; expected bertdesk.json (bertdesk), "
        "config.json with model.safetensors or pytorch_model.bin (Hugging Face), "
        "bert_config.json with bert_model.ckpt.* (Google), or a keras-hub preset"
    )


def config_from_hf(hf, source):
    """bertdesk backbone kwargs from a Hugging Face / Google BERT config."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(hf).__name__}")
    if hf.get("model_type", "bert") != "bert":
        raise CheckpointError(
            f"{source}: model_type is {hf['model_type']!r}, expected 'bert'"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(
            f"{source}: hidden_act is {hf['hidden_act']!r}; bertdesk implements "
            "BERT's exact (erf) 'gelu' only"
        )
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"{source}: position_embedding_type {hf['position_embedding_type']!r} "
            "is not supported (expected 'absolute')"
        )
    for field, what in (("is_decoder", "causal (decoder) attention"),
                        ("add_cross_attention", "cross-attention layers")):
        if hf.get(field):
            raise CheckpointError(
                f"{source}: {field} is {hf[field]!r} ({what}); bertdesk implements BERT's "
                "bidirectional encoder only")
    config = {ours: hf[theirs] for theirs, ours in HF_CONFIG_KEYS.items() if theirs in hf}
    config.setdefault("max_sequence_length", 512)
    config.setdefault("type_vocabulary_size", 2)
    config.setdefault("layer_norm_epsilon", 1e-12)
    return check_architecture(config, source, {ours: theirs for theirs, ours
                                               in HF_CONFIG_KEYS.items()})


# The architecture's sizes: whole numbers >= 1, the first five required
_SIZES = ("vocabulary_size", "num_layers", "hidden_dim", "num_heads", "intermediate_dim",
          "max_sequence_length", "type_vocabulary_size")
_RATES = ("dropout", "attention_dropout", "layer_norm_epsilon", "initializer_range")


def check_architecture(config, source, names=None):
    """`config` (bertdesk backbone kwargs read from the file `source`) when its
    sizes are whole numbers >= 1 (the first five present), its rates numbers
    and the hidden size a multiple of the heads; CheckpointError naming the
    file and the field (as `names` maps ours to the file's) otherwise."""
    names = names or {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: the architecture config must be a JSON object, "
                              f"got {type(config).__name__}")
    missing = [names.get(k, k) for k in _SIZES[:5] if k not in config]
    if missing:
        raise CheckpointError(f"{source}: missing config fields {missing}")
    for key in _SIZES:
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{source}: {names.get(key, key)} must be a whole number "
                                  f">= 1, got {value!r}")
    for key in _RATES:
        value = config.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise CheckpointError(f"{source}: {names.get(key, key)} must be a number >= 0, "
                                  f"got {value!r}")
    if config["hidden_dim"] % config["num_heads"]:
        raise CheckpointError(
            f"{source}: {names.get('hidden_dim', 'hidden_dim')} {config['hidden_dim']} is not "
            f"divisible by {names.get('num_heads', 'num_heads')} {config['num_heads']}"
        )
    return config


def config_to_hf(config, architectures=("BertModel",)):
    hf = {theirs: config[ours] for theirs, ours in HF_CONFIG_KEYS.items() if ours in config}
    hf.update({
        "architectures": list(architectures),
        "model_type": "bert",
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "pad_token_id": 0,
    })
    return hf


# === Weight files ===
def _as_float32(value):
    """Floating arrays (bfloat16 too, which numpy files under kind "V") as
    float32 (no copy when they are already), others (integer counters)
    unchanged."""
    value = np.asarray(value)
    floating = value.dtype.kind == "f" or value.dtype.name in ("bfloat16", "float8_e4m3fn",
                                                               "float8_e5m2")
    return value.astype(np.float32, copy=False) if floating else value


def _safetensors_names(path):
    """{stored name: shape} of a safetensors file, from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None


def _read_safetensor(path, name):
    """One tensor of a safetensors file, floats as float32."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            try:
                return _as_float32(f.get_tensor(name))
            except TypeError:
                pass  # numpy has no bfloat16: read through torch, then upcast
        import torch  # noqa: F401  (only for bf16 tensors)

        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name).float().numpy()
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor {name!r} ({e})") from None


class LazyTensors(Mapping):
    """Canonical name -> numpy array (floats as float32) of one or more weight
    files, each tensor read from its file when asked for.

    `read_checkpoint` checks names and shapes from what the files say of
    their tensors (a safetensors header; a PyTorch zip file's pickle, its
    data mapped but not read), and assigning a checkpoint to a model reads
    one tensor at a time and lets it go: loading BERT-base (0.44 GB of
    weights) into a freshly built model peaked at twice the weights when
    every tensor was read first. Nothing is cached: each lookup opens the
    file again (within `kept_open()`, once per 64 MB read), so no file is
    held open between loads; a file replaced or rewritten since the
    checkpoint was read is refused rather than mixed with what was checked.

    Args:
        files: the weight files, in order.
        names: `names(path)` -> {stored name: shape} of one file.
        read: `read(path, stored name)` -> that tensor, floats as float32;
            None: `opener(path)(stored name)`.
        opener: for files whose opening costs more than their reading:
            `opener(path)` -> `read_one(stored name)`, reused within
            `kept_open()`.
        key: stored name -> canonical name.
    """

    def __init__(self, files, names, read=None, opener=None, key=canonical_name):
        self._read = read or (lambda path, name: opener(path)(name))
        self._opener = opener
        self._handles = None  # {path: [read_one, bytes read]} within kept_open()
        self._where = {}  # canonical name -> (file, stored name, shape)
        self._stamps = {}
        for path in files:
            path = Path(path)
            self._stamps[path] = _stamp(path)
            for name, shape in names(path).items():
                canonical = key(name)
                if canonical in self._where:
                    raise CheckpointError(
                        f"{path}: tensor {name!r} appears twice (as {canonical!r})")
                self._where[canonical] = (path, name, shape)

    def __getitem__(self, key):
        path, name, _ = self._where[key]
        if _stamp(path) != self._stamps[path]:
            raise CheckpointError(f"{path}: the file changed after the checkpoint was read; "
                                  "read the checkpoint again")
        if self._handles is None or self._opener is None:
            return self._read(path, name)
        handle = self._handles.get(path)
        if handle is None or handle[1] >= self._budget:
            self._handles.pop(path, None)  # let the spent one go first
            handle = self._handles[path] = [self._opener(path), 0]
        value = handle[0](name)
        handle[1] += value.nbytes
        return value

    @contextlib.contextmanager
    def kept_open(self, budget=64 << 20):
        """Within: each file is opened once for every `budget` bytes of
        tensors read from it, not once per tensor. A PyTorch `.bin` file is
        read through a mapping of it, and what is read through a mapping
        stays resident while it is open: reopening it every 64 MB bounds
        that, where one opening for the whole file would hold twice the
        weights again, and one per tensor parsed the file's pickle 200
        times for BERT-base (2.6 s against 1.0 s to load it)."""
        self._handles, self._budget = {}, budget
        try:
            yield self
        finally:
            self._handles = None

    def __contains__(self, key):  # (Mapping's would read the tensor)
        return key in self._where

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)

    def shape(self, key):
        """The tensor's shape, without reading it."""
        return self._where[key][2]

    def alias(self, key, existing):
        """Read the tensor `existing` under the name `key` too."""
        self._where[key] = self._where[existing]


def safetensors_tensors(files):
    """The tensors of safetensors `files`, read on demand."""
    return LazyTensors(files, _safetensors_names, _read_safetensor)


def _stamp(path):
    try:
        st = Path(path).stat()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _torch_bin_state(path, mmap=False):
    """A `.bin` file's state dict, loaded with `weights_only` (tensors and
    plain containers only: a pickle that would run code is refused);
    `mmap`: its storages mapped from the file, not read."""
    import pickle

    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds more than tensors and "
            f"loading it could run code ({e})"
        ) from None
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read PyTorch file ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, "
                                  "expected a tensor")
    return state


def _torch_bin_names(path):
    return {name: tuple(value.shape) for name, value in _torch_bin_state(path, mmap=True).items()}


def _open_torch_bin(path):
    """`read_one(stored name)` over one mapping of the file."""
    state = _torch_bin_state(path, mmap=True)

    def read_one(name):
        import torch

        value = state[name]
        # a copy either way: the mapping goes with the state dict
        return (value.to(torch.float32, copy=True) if value.is_floating_point()
                else value.clone()).numpy()

    return read_one


def torch_bin_tensors(paths):
    """The tensors of `pytorch_model.bin` files (one, or a sharded
    checkpoint's): read on demand from the zip format PyTorch has written
    since 1.6 (its storages can be mapped); older files are read whole."""
    if all(zipfile.is_zipfile(path) for path in paths):
        return LazyTensors(paths, _torch_bin_names, opener=_open_torch_bin)
    out = {}
    for path in paths:
        for key, value in _canonical(
                {k: v.float().numpy() if v.is_floating_point() else v.numpy()
                 for k, v in _torch_bin_state(path).items()}, path).items():
            if key in out:
                raise CheckpointError(f"{path}: tensor {key!r} appears twice")
            out[key] = value
    return out


def _canonical(raw, source):
    out = {}
    for name, value in raw.items():
        key = canonical_name(name)
        if key in out:
            raise CheckpointError(f"{source}: tensor {name!r} appears twice (as {key!r})")
        out[key] = _as_float32(value)
    return out


def read_hf(folder):
    folder = Path(folder)
    config = config_from_hf(read_json(folder / "config.json"), folder / "config.json")
    index = folder / "model.safetensors.index.json"
    bin_index = folder / "pytorch_model.bin.index.json"
    if (folder / "model.safetensors").is_file():
        weights_file = folder / "model.safetensors"
        tensors = safetensors_tensors([weights_file])
    elif index.is_file():
        weights_file = index
        tensors = safetensors_tensors(_shards(index))
    elif (folder / "pytorch_model.bin").is_file():
        weights_file = folder / "pytorch_model.bin"
        tensors = torch_bin_tensors([weights_file])
    elif bin_index.is_file():
        weights_file = bin_index
        tensors = torch_bin_tensors(_shards(bin_index))
    else:
        raise CheckpointError(
            f"{folder}: config.json found but no weights: expected model.safetensors, "
            "pytorch_model.bin or a sharded checkpoint's model.safetensors.index.json or "
            "pytorch_model.bin.index.json"
        )
    return Checkpoint("hf", folder, config, tensors, weights_file,
                      vocab_file=_vocab_file(folder))


def _shards(index):
    """The weight files a sharded checkpoint's index names (its `weight_map`
    values): plain file names beside it, each there."""
    contents = read_json(index)
    weight_map = contents.get("weight_map") if isinstance(contents, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: expected a non-empty 'weight_map' object "
                              "(tensor name -> shard file)")
    shards = []
    for shard in sorted(set(map(str, weight_map.values()))):
        if Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(f"{index}: shard {shard!r} is not a file name in the "
                                  "checkpoint's folder")
        if not (index.parent / shard).is_file():
            raise CheckpointError(f"{index}: names the shard {shard!r}, which is not there")
        shards.append(index.parent / shard)
    return shards


# optimizer slots and counters: google-research/bert's AdamWeightDecayOptimizer
# (adam_m, adam_v), TensorFlow's Adam (Adam, Adam_1, beta1_power, beta2_power)
_GOOGLE_SKIP = re.compile(r"(^|/)(adam_[mv]|Adam(_1)?|beta[12]_power|global_step|good_steps|"
                          r"bad_steps|loss_scale)($|/)")
_GOOGLE_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def google_to_canonical(name):
    """(canonical name, transpose?) of one Google TF checkpoint variable, or
    None for optimizer slots and counters."""
    if _GOOGLE_SKIP.search(name):
        return None
    special = {
        "cls/predictions/output_bias": "cls.predictions.bias",
        "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
        "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
        # the heads run_classifier.py and run_squad.py fine-tune, (out, in)
        # as transformers' are: set aside as theirs (the backbone loads)
        "output_weights": "classifier.weight",
        "output_bias": "classifier.bias",
        "cls/squad/output_weights": "qa_outputs.weight",
        "cls/squad/output_bias": "qa_outputs.bias",
    }
    if name in special:
        return special[name], False
    n = name[len("bert/"):] if name.startswith("bert/") else name
    n = re.sub(r"layer_(\d+)", r"layer.\1", n).replace("/", ".")
    if n.endswith(".kernel"):
        return n[: -len(".kernel")] + ".weight", True
    if n.split(".")[-1] in _GOOGLE_EMBEDDINGS:
        return n + ".weight", False
    return n, False


def read_google(folder):
    folder = Path(folder)
    config_path = folder / "bert_config.json"
    config = config_from_hf(read_json(config_path), config_path)
    indexes = sorted(folder.glob("*.ckpt*.index"))
    if not indexes:
        raise CheckpointError(f"{folder}: bert_config.json found but no bert_model.ckpt.index")
    if len(indexes) > 1:
        # Several saves: take the newest step, as tf.train.latest_checkpoint would.
        indexes.sort(key=lambda p: int(m.group(1)) if (m := re.search(r"-(\d+)\.index$", p.name)) else -1)
    prefix = str(indexes[-1])[: -len(".index")]
    index = Path(prefix + ".index")
    tensors = LazyTensors([index], _google_names, opener=_open_google,
                          key=lambda name: canonical_name(google_to_canonical(name)[0]))
    return Checkpoint("google", folder, config, tensors, index, vocab_file=_vocab_file(folder))


def _tensorflow(index):
    """TensorFlow, whose format a Google checkpoint is (or a CheckpointError)."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise CheckpointError(f"{index}: a Google TF checkpoint is read with TensorFlow, which "
                              f"cannot be imported here ({e})") from None
    return tf


def _google_reader(index):
    tf = _tensorflow(index)
    prefix = str(index)[: -len(".index")]
    try:
        return tf.train.load_checkpoint(prefix)
    except tf.errors.OpError as e:
        raise CheckpointError(f"{prefix}: cannot read TF checkpoint ({e.message})") from None


def _google_names(index):
    """{variable: shape as bertdesk stores it} of the weights in a Google
    checkpoint (optimizer slots and counters left out)."""
    names = {}
    for name, shape in _google_reader(index).get_variable_to_shape_map().items():
        mapped = google_to_canonical(name)
        if mapped is not None:
            names[name] = tuple(shape[::-1] if mapped[1] else shape)
    return names


def _open_google(index):
    """`read_one(variable)` over one reader of the checkpoint."""
    tf = _tensorflow(index)
    reader = _google_reader(index)

    def read_one(name):
        try:
            value = reader.get_tensor(name)
        except tf.errors.OpError as e:
            raise CheckpointError(f"{index}: cannot read variable {name!r} ({e.message})") from None
        value = _as_float32(value)
        return np.ascontiguousarray(value.T if google_to_canonical(name)[1] else value)

    return read_one


def read_keras_hub(folder):
    folder = Path(folder)
    try:
        import keras_hub
    except ImportError as e:
        raise CheckpointError(f"{folder}: is a keras-hub preset but keras-hub is not installed ({e})") from None
    spec = read_json(folder / "config.json")
    if spec.get("class_name") != "BertBackbone":
        raise CheckpointError(
            f"{folder / 'config.json'}: keras-hub class {spec.get('class_name')!r}, expected BertBackbone"
        )
    c = spec.get("config", {})
    try:
        config = {
            "vocabulary_size": c["vocabulary_size"], "num_layers": c["num_layers"],
            "hidden_dim": c["hidden_dim"], "num_heads": c["num_heads"],
            "intermediate_dim": c["intermediate_dim"],
            "max_sequence_length": c.get("max_sequence_length", 512),
            "type_vocabulary_size": c.get("num_segments", 2),
            "dropout": c.get("dropout", 0.1), "attention_dropout": c.get("dropout", 0.1),
            "layer_norm_epsilon": 1e-12,
        }
    except KeyError as e:
        raise CheckpointError(f"{folder / 'config.json'}: missing config field {e}") from None
    try:
        model = keras_hub.models.BertBackbone.from_preset(str(folder))
    except Exception as e:
        raise CheckpointError(f"{folder}: keras-hub could not load this preset ({e})") from None
    tensors = keras_hub_backbone_tensors(model)
    return Checkpoint("keras_hub", folder, config, tensors, folder / "model.weights.h5",
                      vocab_file=_vocab_file(folder))


def keras_hub_backbone_tensors(model):
    """Canonical tensors of a keras-hub `BertBackbone` (read by layer name)."""
    from keras import ops

    def a(v):
        return np.asarray(ops.convert_to_numpy(v), dtype=np.float32)

    H = model.hidden_dim
    out = {
        "embeddings.word_embeddings.weight": a(model.get_layer("token_embedding").embeddings),
        "embeddings.position_embeddings.weight": a(model.get_layer("position_embedding").position_embeddings),
        "embeddings.token_type_embeddings.weight": a(model.get_layer("segment_embedding").embeddings),
        "embeddings.LayerNorm.weight": a(model.get_layer("embeddings_layer_norm").gamma),
        "embeddings.LayerNorm.bias": a(model.get_layer("embeddings_layer_norm").beta),
        "pooler.dense.weight": a(model.get_layer("pooled_dense").kernel).T,
        "pooler.dense.bias": a(model.get_layer("pooled_dense").bias),
    }
    for i in range(model.num_layers):
        block = model.get_layer(f"transformer_layer_{i}")
        attn = block._self_attention_layer
        p = f"encoder.layer.{i}."
        for proj, dense in (("query", attn.query_dense), ("key", attn.key_dense),
                            ("value", attn.value_dense)):
            out[f"{p}attention.self.{proj}.weight"] = a(dense.kernel).reshape(H, H).T
            out[f"{p}attention.self.{proj}.bias"] = a(dense.bias).reshape(H)
        out[f"{p}attention.output.dense.weight"] = a(attn.output_dense.kernel).reshape(H, H).T
        out[f"{p}attention.output.dense.bias"] = a(attn.output_dense.bias)
        for norm, name in ((block._self_attention_layer_norm, "attention.output.LayerNorm"),
                           (block._feedforward_layer_norm, "output.LayerNorm")):
            out[f"{p}{name}.weight"] = a(norm.gamma)
            out[f"{p}{name}.bias"] = a(norm.beta)
        out[f"{p}intermediate.dense.weight"] = a(block._feedforward_intermediate_dense.kernel).T
        out[f"{p}intermediate.dense.bias"] = a(block._feedforward_intermediate_dense.bias)
        out[f"{p}output.dense.weight"] = a(block._feedforward_output_dense.kernel).T
        out[f"{p}output.dense.bias"] = a(block._feedforward_output_dense.bias)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def read_bertdesk(folder):
    folder = Path(folder)
    meta = read_json(folder / "bertdesk.json")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder / 'bertdesk.json'}: expected a JSON object, got "
                              f"{type(meta).__name__}")
    if "backbone" not in meta:
        raise CheckpointError(f"{folder / 'bertdesk.json'}: missing the 'backbone' field")
    config = check_architecture(meta["backbone"], f"{folder / 'bertdesk.json'}: backbone")
    tok = meta.get("tokenizer") or {}
    if not isinstance(tok, dict):
        raise CheckpointError(f"{folder / 'bertdesk.json'}: tokenizer must be a JSON object, got "
                              f"{type(tok).__name__}")
    weights_file = folder / "model.safetensors"
    if not weights_file.is_file():
        raise CheckpointError(f"{weights_file}: file not found")
    tensors = safetensors_tensors([weights_file])
    return Checkpoint("bertdesk", folder, dict(config), tensors, weights_file,
                      vocab_file=_vocab_file(folder), lowercase=tok.get("lowercase"),
                      metadata=meta)


READERS = {"bertdesk": read_bertdesk, "hf": read_hf, "google": read_google,
           "keras_hub": read_keras_hub}


def _vocab_file(folder):
    from bertdesk.tokenizer import find_vocab

    return find_vocab(folder)
