"""int8 weights for inference: `quantize_int8`.

    model = bertdesk.Predictor.load("runs/sst2/model", quantize="int8")
    # or, on a model of one's own:
    bertdesk.quantize_int8(model)

Keras' int8 scheme (`model.quantize("int8")`), with the inputs quantized to
7 bits: every `Dense` kernel becomes int8 with one scale per output column,
and at each call its input is quantized per row (token) to [-63, 63], the
integers multiplied, the sums scaled back to floats. Embedding tables become
int8 rows with one scale each. What it buys: the weights in a quarter of
their float32 memory, and on PyTorch's CPU the products as oneDNN's integer
GEMM (`bertdesk/layers/int8_kernels.py`). On JAX and TensorFlow Keras' own
int8 call runs (XLA's integer dot), with the same numbers.

Why 7 bits and not Keras' default 8: CPUs without VNNI instructions (AVX2
alone) sum byte products in 16-bit pairs, which 8-bit inputs can overflow;
7-bit inputs never do, so the fast product is exact on every x86 CPU and
equals Keras' call on every backend. Measured on SST-2 (README,
"Prediction in int8"): see the table there for what it costs in accuracy.
"""

import gc

INPUT_RANGE = 63  # inputs quantized to [-63, 63]


def quantize_int8(model, embeddings=True):
    """Quantize `model`'s `Dense` layers (and, with `embeddings`, its
    embedding tables) to int8 in place, for inference; returns `model`.

    A table tied to a masked-LM head (pretraining models) stays float: the
    head reads it as a matrix. The model is for prediction afterwards: the
    int8 kernels do not train. Quantizing twice is refused.
    """
    import keras
    from keras.quantizers import AbsMaxQuantizer, Int8QuantizationConfig

    if any(getattr(layer, "quantization_mode", None) for layer in model._flatten_layers()):
        raise ValueError(f"{model.name}: already quantized "
                         "(quantize the float model once)")
    tied = _tied_tables(model)

    def chosen(layer):
        if isinstance(layer, keras.layers.Dense):
            return True
        return (embeddings and isinstance(layer, keras.layers.Embedding)
                and not any(layer is table for table in tied))

    config = Int8QuantizationConfig(
        activation_quantizer=AbsMaxQuantizer(value_range=(-INPUT_RANGE, INPUT_RANGE)))
    # Keras runs a full `gc.collect()` for every variable a layer deletes
    # (`Layer.__delattr__`): over a large heap, seconds each. What is alive
    # now is not garbage, so it is left out of those collections.
    gc.freeze()
    try:
        model.quantize(config=config, filters=chosen)
    finally:
        gc.unfreeze()
    return model


def _tied_tables(model):
    """Embedding layers a masked-LM head reads as its output matrix."""
    from bertdesk.layers.bert_masked_lm_head import BertMaskedLMHead

    return [layer.token_embedding for layer in model._flatten_layers()
            if isinstance(layer, BertMaskedLMHead)]
