"""Map BERT weights between the canonical names and bertdesk layers.

The canonical form is the Hugging Face `BertModel` state dict: names such as
`encoder.layer.3.attention.self.query.weight`, dense weights `(out, in)`.
Every importer converts its source into this form and every exporter starts
from it, so each format needs one name table, not one per pair of formats.
Weights are matched by name, never by position.
"""

import contextlib

import numpy as np

from bertdesk.io.errors import CheckpointError

# Tensors that carry no weights of their own (buffers, tied copies).
IGNORED = ("embeddings.position_ids", "cls.predictions.decoder.weight",
           "cls.predictions.decoder.bias")
# Task heads of transformers' Bert*For* classes: kept aside, not an error.
TASK_HEAD_PREFIXES = ("classifier.", "qa_outputs.")
MLM_NAMES = ("cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
             "cls.predictions.transform.LayerNorm.weight",
             "cls.predictions.transform.LayerNorm.bias", "cls.predictions.bias")
NSP_NAMES = ("cls.seq_relationship.weight", "cls.seq_relationship.bias")
POOLER_NAMES = ("pooler.dense.weight", "pooler.dense.bias")


def canonical_name(name):
    """Normalise spelling variants: a `bert.` prefix and LayerNorm gamma/beta."""
    for prefix in ("bert.", "model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.endswith(".gamma"):
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    return name


def expected_shapes(config):
    """Canonical name -> shape for a backbone config, heads included."""
    V, H, F = config["vocabulary_size"], config["hidden_dim"], config["intermediate_dim"]
    shapes = {
        "embeddings.word_embeddings.weight": (V, H),
        "embeddings.position_embeddings.weight": (config["max_sequence_length"], H),
        "embeddings.token_type_embeddings.weight": (config["type_vocabulary_size"], H),
        "embeddings.LayerNorm.weight": (H,),
        "embeddings.LayerNorm.bias": (H,),
    }
    for i in range(config["num_layers"]):
        p = f"encoder.layer.{i}."
        for proj in ("query", "key", "value"):
            shapes[f"{p}attention.self.{proj}.weight"] = (H, H)
            shapes[f"{p}attention.self.{proj}.bias"] = (H,)
        shapes.update({
            f"{p}attention.output.dense.weight": (H, H),
            f"{p}attention.output.dense.bias": (H,),
            f"{p}attention.output.LayerNorm.weight": (H,),
            f"{p}attention.output.LayerNorm.bias": (H,),
            f"{p}intermediate.dense.weight": (F, H),
            f"{p}intermediate.dense.bias": (F,),
            f"{p}output.dense.weight": (H, F),
            f"{p}output.dense.bias": (H,),
            f"{p}output.LayerNorm.weight": (H,),
            f"{p}output.LayerNorm.bias": (H,),
        })
    shapes.update({"pooler.dense.weight": (H, H), "pooler.dense.bias": (H,)})
    shapes.update({
        "cls.predictions.transform.dense.weight": (H, H),
        "cls.predictions.transform.dense.bias": (H,),
        "cls.predictions.transform.LayerNorm.weight": (H,),
        "cls.predictions.transform.LayerNorm.bias": (H,),
        "cls.predictions.bias": (V,),
        "cls.seq_relationship.weight": (2, H),
        "cls.seq_relationship.bias": (2,),
    })
    return shapes


def kept_open(tensors):
    """`tensors.kept_open()` where `tensors` reads lazily from files that are
    worth keeping open while a model is filled; a no-op otherwise."""
    keep = getattr(tensors, "kept_open", None)
    return keep() if callable(keep) else contextlib.nullcontext(tensors)


def tensor_shape(tensors, name):
    """The shape of `tensors[name]`, without reading it where `tensors` reads
    lazily (`formats.LazyTensors`)."""
    shape = getattr(tensors, "shape", None)
    return tuple(shape(name)) if callable(shape) else tuple(np.shape(tensors[name]))


def head_in(tensors, names, source):
    """Whether `tensors` hold the whole head of canonical `names` (MLM_NAMES
    or NSP_NAMES): False where they hold none of it. CheckpointError naming
    `source` for part of a head (the rest would stay random, silently), and
    for a masked-LM decoder that is not the token embedding: bertdesk's
    `BertMaskedLMHead` multiplies by the token embedding (the decoder tied
    to it, as in BERT), so a checkpoint trained with its own decoder
    (`tie_word_embeddings: false`) would give other logits."""
    present = [n for n in names if n in tensors]
    if not present:
        return False
    if len(present) < len(names):
        missing = [n for n in names if n not in tensors]
        raise CheckpointError(
            f"{source}: part of a {'masked-LM' if names == MLM_NAMES else 'next-sentence'} "
            f"head: it has {', '.join(map(repr, present))} but lacks "
            f"{', '.join(map(repr, missing))}")
    if names == MLM_NAMES:
        for copy, tied in TIED_COPIES.items():
            if copy not in tensors:
                continue
            if tensor_shape(tensors, copy) != tensor_shape(tensors, tied):
                gap = f"shape {tensor_shape(tensors, copy)}, not {tensor_shape(tensors, tied)}"
            else:
                a, b = tensors[copy], tensors[tied]
                if np.array_equal(a, b):
                    continue
                gap = f"by up to {float(np.max(np.abs(a - b))):.3g}"
            raise CheckpointError(
                f"{source}: {copy!r} differs from {tied!r} ({gap}): the masked-LM "
                "decoder is not tied to the token embedding, which bertdesk's "
                "BertMaskedLMHead computes its logits with (load the backbone alone, or "
                "a checkpoint with tied weights)")
    return True


# The copies transformers writes of tied weights, and the tensor each copies
TIED_COPIES = {"cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
               "cls.predictions.decoder.bias": "cls.predictions.bias"}


def read_tied_bias(tensors):
    """`tensors` with the masked-LM output bias read from its decoder copy
    (`cls.predictions.decoder.bias`) where the checkpoint stores only that
    one, as transformers reads such a file; the same `tensors` otherwise."""
    bias, copy = "cls.predictions.bias", "cls.predictions.decoder.bias"
    if bias in tensors or copy not in tensors:
        return tensors
    alias = getattr(tensors, "alias", None)
    if callable(alias):  # (`formats.LazyTensors`: no read)
        alias(bias, copy)
    else:
        tensors[bias] = tensors[copy]
    return tensors


def validate(tensors, config, source):
    """Check names and shapes of canonical `tensors` against `config`.

    Returns `(backbone_names_missing_but_optional, task_head_shapes)`.
    Raises `CheckpointError` naming `source` and every offending tensor.
    """
    shapes = expected_shapes(config)
    problems, task_heads = [], {}
    for name in tensors:
        if name in IGNORED:
            continue
        shape = tensor_shape(tensors, name)
        if name.startswith(TASK_HEAD_PREFIXES):
            task_heads[name] = shape
            continue
        if name not in shapes:
            problems.append(f"unknown tensor {name!r} {shape}")
        elif shape != shapes[name]:
            problems.append(
                f"tensor {name!r} has shape {shape}, the config "
                f"expects {shapes[name]}"
            )
    optional = set(POOLER_NAMES + MLM_NAMES + NSP_NAMES)
    missing = [n for n in shapes if n not in tensors and n not in optional]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        problems.append(f"missing tensors {shown}{more}")
    if problems:
        raise CheckpointError(
            f"{source}: does not match its config "
            f"(layers={config['num_layers']}, hidden={config['hidden_dim']}, "
            f"vocab={config['vocabulary_size']}): " + "; ".join(problems[:8])
            + (f"; and {len(problems) - 8} more problems" if len(problems) > 8 else "")
        )
    missing_optional = [n for n in POOLER_NAMES if n not in tensors]
    return missing_optional, task_heads


def _np(variable):
    """The variable's value as a numpy array: a read-only view of its memory
    where the backend keeps it on the host (PyTorch's and JAX's CPU
    tensors), else Keras' copy. For writing at once (a view follows the
    variable's later updates): with Keras' copies and safetensors' bytes,
    writing a BERT-base model folder took 1.3 GB beside the model."""
    value = getattr(variable, "value", variable)
    view = _host_view(value)
    if view is not None:
        return view
    from keras import ops  # (not at import: reading checkpoints' names needs no Keras)

    return np.asarray(ops.convert_to_numpy(variable))


def _host_view(value):
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "torch":
            import torch

            if value.device.type != "cpu" or value.dtype == torch.bfloat16:
                return None  # (numpy has no bfloat16 view of a torch tensor)
            view = value.detach().numpy()
        elif backend == "jax":
            if any(d.platform != "cpu" for d in value.devices()):
                return None
            view = np.asarray(value)  # no copy on the CPU
        else:
            return None
    except (AttributeError, TypeError, RuntimeError):
        return None
    view = view.view()
    view.flags.writeable = False
    return view


def _transposed(matrix, rows=16):
    """`matrix.T` as a row-major array, copied `rows` rows at a time: numpy's
    copy of a transposed view strides through memory and took 4.8 ms for a
    (3072, 768) kernel against 1.4 ms in blocks, most of the time of
    loading or saving a checkpoint (its dense weights are stored (out, in),
    Keras' kernels are (in, out))."""
    matrix = np.asarray(matrix)
    out = np.empty(matrix.shape[::-1], matrix.dtype)
    for start in range(0, matrix.shape[0], rows):
        out[:, start:start + rows] = matrix[start:start + rows].T
    return out


def refuse_quantized(model):
    """A quantized layer holds int8 values and scales, not its weights:
    written as weights they would make a checkpoint of garbage."""
    quantized = [layer.path for layer in model._flatten_layers()
                 if getattr(layer, "quantization_mode", None)]
    if quantized:
        raise ValueError(f"{model.name} is quantized ({quantized[0]} and "
                         f"{len(quantized) - 1} more layers): save the float model, and "
                         "quantize it after loading")


def backbone_tensors(backbone):
    """The backbone's weights as canonical numpy arrays (float32): views of
    the variables where the backend allows (dense weights as transposed
    views), to be written at once (`safetensors_writer` copies a transposed
    view a block at a time)."""
    refuse_quantized(backbone)
    e = backbone.embeddings
    out = {
        "embeddings.word_embeddings.weight": _np(e.token_embedding.embeddings),
        "embeddings.position_embeddings.weight": _np(e.position_embedding.embeddings),
        "embeddings.token_type_embeddings.weight": _np(e.segment_embedding.embeddings),
        "embeddings.LayerNorm.weight": _np(e.layer_norm.gamma),
        "embeddings.LayerNorm.bias": _np(e.layer_norm.beta),
    }
    H = backbone.hidden_dim
    for i, block in enumerate(backbone.encoder_layers):
        p = f"encoder.layer.{i}."
        qkv_kernel = _np(block.attention.qkv.kernel)  # (H, 3H) = [q | k | v]
        qkv_bias = _np(block.attention.qkv.bias)
        for j, proj in enumerate(("query", "key", "value")):
            out[f"{p}attention.self.{proj}.weight"] = qkv_kernel[:, j * H:(j + 1) * H].T
            out[f"{p}attention.self.{proj}.bias"] = qkv_bias[j * H:(j + 1) * H]
        for dense, name in ((block.attention_output, "attention.output.dense"),
                            (block.intermediate, "intermediate.dense"),
                            (block.output_dense, "output.dense")):
            out[f"{p}{name}.weight"] = _np(dense.kernel).T
            out[f"{p}{name}.bias"] = _np(dense.bias)
        for norm, name in ((block.attention_layer_norm, "attention.output.LayerNorm"),
                           (block.output_layer_norm, "output.LayerNorm")):
            out[f"{p}{name}.weight"] = _np(norm.gamma)
            out[f"{p}{name}.bias"] = _np(norm.beta)
    out["pooler.dense.weight"] = _np(backbone.pooler.dense.kernel).T
    out["pooler.dense.bias"] = _np(backbone.pooler.dense.bias)
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def _assign(variable, value):
    value = np.ascontiguousarray(value, dtype=np.float32).astype(variable.dtype, copy=False)
    if variable._value is None and variable._initializer is not None:
        # Created without a value (`build_without_values`): this array is
        # its first value, through the path Keras gives an initializer's.
        variable._initialize_with_initializer(lambda shape, dtype=None: value)
        variable._initializer = None
    else:
        variable.assign(value)


def build_without_values(build):
    """`build()` (a model's constructor call) with its variables created
    without values; returns the model. Fill it with `assign_backbone` and
    the head assigners, inside `initialized_at_the_end(model)`.

    Loading a checkpoint into a model built as usual drew every weight at
    random first, to be overwritten: at base 0.44 GB of values and their
    generators' temporaries (JAX's kept about 0.25 GB more in the heap) and
    0.5-2.2 s, before the first tensor was read. Keras creates the
    variables of a model built inside a `StatelessScope` without values
    (its deferred initialisation, for symbolic builds): the shapes and the
    graph are the same, no value is drawn.
    """
    import keras

    with keras.StatelessScope(initialize_variables=False):
        return build()


@contextlib.contextmanager
def initialized_at_the_end(model):
    """Around the assignments into a `build_without_values` model: at the
    end, every variable no tensor was assigned to (a checkpoint without a
    pooler, a new task head) gets its initializer's value, as a model
    built the usual way would have; and Keras' list of variables awaiting
    initialisation forgets the model's (the next stateless scope would
    otherwise initialise them again), whether the assignments finished or
    raised."""
    from keras.src.backend.common import global_state

    try:
        yield model
        for variable in model.variables:
            if variable._value is None:
                variable._deferred_initialize()
    finally:
        mine = {id(v) for v in model.variables}
        pending = global_state.get_global_attribute("uninitialized_variables") or []
        global_state.set_global_attribute(
            "uninitialized_variables", [v for v in pending if id(v) not in mine])


def assign_backbone(backbone, tensors):
    """Assign validated canonical `tensors` to `backbone` (pooler optional)."""
    e = backbone.embeddings
    _assign(e.token_embedding.embeddings, tensors["embeddings.word_embeddings.weight"])
    _assign(e.position_embedding.embeddings, tensors["embeddings.position_embeddings.weight"])
    _assign(e.segment_embedding.embeddings, tensors["embeddings.token_type_embeddings.weight"])
    _assign(e.layer_norm.gamma, tensors["embeddings.LayerNorm.weight"])
    _assign(e.layer_norm.beta, tensors["embeddings.LayerNorm.bias"])
    for i, block in enumerate(backbone.encoder_layers):
        p = f"encoder.layer.{i}."
        _assign(block.attention.qkv.kernel, _transposed(np.concatenate(
            [tensors[f"{p}attention.self.{proj}.weight"]
             for proj in ("query", "key", "value")])))
        _assign(block.attention.qkv.bias, np.concatenate(
            [tensors[f"{p}attention.self.{proj}.bias"]
             for proj in ("query", "key", "value")]))
        for dense, name in ((block.attention_output, "attention.output.dense"),
                            (block.intermediate, "intermediate.dense"),
                            (block.output_dense, "output.dense")):
            _assign(dense.kernel, _transposed(tensors[f"{p}{name}.weight"]))
            _assign(dense.bias, tensors[f"{p}{name}.bias"])
        for norm, name in ((block.attention_layer_norm, "attention.output.LayerNorm"),
                           (block.output_layer_norm, "output.LayerNorm")):
            _assign(norm.gamma, tensors[f"{p}{name}.weight"])
            _assign(norm.beta, tensors[f"{p}{name}.bias"])
    if "pooler.dense.weight" in tensors:
        _assign(backbone.pooler.dense.kernel, _transposed(tensors["pooler.dense.weight"]))
        _assign(backbone.pooler.dense.bias, tensors["pooler.dense.bias"])


def mlm_head_tensors(head):
    return {
        "cls.predictions.transform.dense.weight": _np(head.transform.kernel).T,
        "cls.predictions.transform.dense.bias": _np(head.transform.bias),
        "cls.predictions.transform.LayerNorm.weight": _np(head.layer_norm.gamma),
        "cls.predictions.transform.LayerNorm.bias": _np(head.layer_norm.beta),
        "cls.predictions.bias": _np(head.output_bias),
    }


def assign_mlm_head(head, tensors):
    _assign(head.transform.kernel, _transposed(tensors["cls.predictions.transform.dense.weight"]))
    _assign(head.transform.bias, tensors["cls.predictions.transform.dense.bias"])
    _assign(head.layer_norm.gamma, tensors["cls.predictions.transform.LayerNorm.weight"])
    _assign(head.layer_norm.beta, tensors["cls.predictions.transform.LayerNorm.bias"])
    _assign(head.output_bias, tensors["cls.predictions.bias"])


def nsp_head_tensors(head):
    return {"cls.seq_relationship.weight": _np(head.dense.kernel).T,
            "cls.seq_relationship.bias": _np(head.dense.bias)}


def assign_nsp_head(head, tensors):
    _assign(head.dense.kernel, tensors["cls.seq_relationship.weight"].T)
    _assign(head.dense.bias, tensors["cls.seq_relationship.bias"])
