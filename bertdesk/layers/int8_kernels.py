"""Integer products for a `keras.layers.Dense` that Keras has quantized to
int8, on PyTorch's CPU.

Keras' int8 `Dense` keeps its kernel as int8 with one scale per output
column and, at each call, quantizes its input per row (`AbsMaxQuantizer`:
`round(x * r / max|x|)`, clipped to [-r, r]), multiplies the two integer
matrices and divides by both scales. The product is `keras.ops.matmul` of
two int8 tensors, which on PyTorch's CPU is an int32 `matmul` without a
fast kernel: a (2048, 768) x (768, 3072) product takes 858 ms against 84 ms
in float32. `torch._int_mm` is slower still there (6.1 s); Keras takes it
on CUDA only.

Here the same product goes to oneDNN's u8 x s8 GEMM
(`torch.ops.onednn.qlinear_pointwise`, the kernel PyTorch's own x86
quantization lowers to), with the input's integers shifted by `r + 1` into
unsigned bytes (the kernel subtracts that zero point). Its sums of integer
products are exact, so the result is Keras' to float rounding, with one
condition: CPUs without VNNI instructions (AVX2 only) add products of
unsigned and signed bytes in pairs into 16-bit integers, which saturate
past 32,767. With 7-bit inputs (r = 63, shifted into [1, 127]) a pair is at
most 2 * 127 * 127 = 32,258 and never does (bertdesk's own quantization,
`bertdesk.quantize_int8`, uses r = 63); Keras' default r = 127 takes this
path only where the CPU has VNNI (AVX512-VNNI, AVX-VNNI or AMX), and keeps
Keras' call elsewhere (8-bit inputs there put a layer's outputs off by 100
in the tests' example). Measured on 2 AMD EPYC (Zen 3, AVX2) cores, the
whole call (quantizing the input, the product, the scales and bias) against
float32's `addmm`: (2048, 384) x (384, 1536) 8.1 against 13.2 ms, (256,
384) x (384, 1536) 1.3 against 1.8 ms; a fine-tuned MiniLM's forward pass
at 16 x 128, 187 against 260 ms (bench/int8_quality.py).
"""

import functools


def applies(layer, x):
    """Whether `int8_dense` computes `layer(x)`: a built int8 Dense with a
    bias and no LoRA, in float32, read outside autograd, on the CPU, its
    input quantizer symmetric with a range this CPU sums exactly."""
    import torch

    if getattr(layer, "quantization_mode", None) != "int8" or not layer.use_bias:
        return False
    if layer.lora_enabled or layer.compute_dtype != "float32":
        return False
    if x.dtype != torch.float32 or x.device.type != "cpu" or not _has_onednn():
        return False
    if torch.is_grad_enabled() and x.requires_grad:
        return False
    limit = _input_limit(layer)
    return limit is not None and (limit <= 63 or _has_vnni())


def int8_dense(layer, x, gelu=False):
    """`layer(x)` for an int8 Dense where `applies(layer, x)`; the exact
    GELU applied in place if `gelu`. The kernel's packed copy is made once
    and kept until the kernel or its scales change."""
    import torch

    limit = _input_limit(layer)
    rows = x.reshape(-1, x.shape[-1])  # (tokens, in)
    packed, column_scales = _packed(layer)
    if rows.shape[0] == 0:
        out = rows.new_zeros((0, column_scales.shape[0]))
        return out.view(*x.shape[:-1], out.shape[-1])
    # Keras' AbsMaxQuantizer, op for op (the same integers): scale =
    # r / (max|x| + epsilon) per row, round(x * scale) clipped to [-r, r],
    # where |x * scale| <= r already: the clip changes nothing (in place
    # and without it, a (2048, 1536) row set took 1.6 ms, against 14.4
    # with it and an out-of-place round). `abs().amax` rather than the
    # infinity norm or `aminmax`: 0.4 against 5.3 and 4.5 ms there.
    epsilon = layer.inputs_quantizer.epsilon
    largest = rows.abs().amax(dim=1, keepdim=True)
    scale = torch.div(limit, largest.add_(epsilon))  # (tokens, 1)
    q = (rows * scale).round_().add_(limit + 1).to(torch.uint8)
    zero_points = _zero_points(column_scales.shape[0])
    # The integer sums, divided by the columns' scales inside the kernel.
    out = torch.ops.onednn.qlinear_pointwise(
        q, 1.0, limit + 1, packed, column_scales, zero_points, None,
        1.0, 0, torch.float32, "none", [], "")
    bias = layer.bias.value
    out = out.mul_(scale.reciprocal_()).add_(bias)  # then by the rows'
    if gelu:
        out = torch.ops.aten.gelu_(out)
    return out.view(*x.shape[:-1], out.shape[-1])


def _input_limit(layer):
    """r of the layer's symmetric input quantizer `(-r, r)`, or None for any
    other quantizer."""
    quantizer = getattr(layer, "inputs_quantizer", None)
    value_range = getattr(quantizer, "value_range", None)
    if value_range is None or getattr(quantizer, "output_dtype", "int8") != "int8":
        return None
    low, high = value_range
    if low != -high or not 0 < high <= 127 or int(high) != high:
        return None
    return int(high)  # (Keras quantizes the input over its last axis, whatever it says)


def _packed(layer):
    """oneDNN's packed copy of the layer's int8 kernel and the columns'
    reciprocal scales, kept on the layer with the versions of the tensors
    they were made from."""
    import torch

    kernel, scales = layer._kernel.value, layer.kernel_scale.value
    key = (id(kernel), kernel._version, id(scales), scales._version)
    kept = getattr(layer, "_bertdesk_int8_packed", None)
    if kept is not None and kept[0] == key:
        return kept[1], kept[2]
    with torch.no_grad():
        packed = torch.ops.onednn.qlinear_prepack(kernel.t().contiguous(), None)
        column_scales = scales.detach().to(torch.float32).reciprocal().contiguous()
    object.__setattr__(layer, "_bertdesk_int8_packed", (key, packed, column_scales))
    return packed, column_scales


@functools.lru_cache(maxsize=64)
def _zero_points(columns):
    import torch

    return torch.zeros(columns, dtype=torch.long)


@functools.cache
def _has_onednn():
    import torch

    from bertdesk.layers import cpu_products

    cpu_products.limit_primitive_caches()  # before oneDNN's first primitive, as there
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.onednn, "qlinear_pointwise"))


@functools.cache
def _has_vnni():
    """Whether the CPU adds byte products into 32-bit sums without a 16-bit
    step (Linux's /proc/cpuinfo flags; False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False
