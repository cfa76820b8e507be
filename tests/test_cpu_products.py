"""Float32 products through oneDNN on PyTorch's CPU (`layers/cpu_products.py`):
the same numbers and gradients as ATen's `addmm`/`mm`/`linear`, for the
layouts the model hands them (strided rows, kernel slices, broadcast
gradients, empty batches), inside the feed-forward block and a whole
training step; the choice between the two from `BERTDESK_TORCH_GEMM` or
the measurement. Inference projections (`inference_linear`, bf16 and
float32) with the bias and the GELU in oneDNN's epilogue against float64,
and bf16 kernels kept packed against plain ones, and where each applies."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TINY, random_batch

from bertdesk.layers import cpu_products, fused_kernels

IS_TORCH = keras.backend.backend() == "torch"
pytestmark = pytest.mark.skipif(not IS_TORCH, reason="PyTorch's CPU products")
ONEDNN_AVAILABLE = IS_TORCH and cpu_products._has_linear_pointwise()
needs_onednn = pytest.mark.skipif(not ONEDNN_AVAILABLE, reason="this PyTorch has no oneDNN")
ROOT = Path(__file__).resolve().parents[1]


def _use(monkeypatch, onednn):
    """Products through oneDNN or ATen, as on a CPU where the measurement
    chose it: with oneDNN, the batched products too where oneDNN keeps
    their float32 sums here; without, MKL's (a decision cached before
    would otherwise send the reference's attention to oneDNN as well)."""
    monkeypatch.setattr(cpu_products, "_decision", lambda: (onednn, None))
    batched = onednn and cpu_products.batched_products_stay_float32()
    monkeypatch.setattr(cpu_products, "batched_products_use_onednn", lambda: batched)


def _tensor(shape, seed, grad=False):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).requires_grad_(grad)


def _run_linear(monkeypatch, onednn, rows, weight, bias, weight_is_kernel, upstream):
    import torch

    _use(monkeypatch, onednn)
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None
              for t in (rows, weight, bias)]
    out = cpu_products.linear(*leaves, weight_is_kernel=weight_is_kernel)
    out.backward(upstream)
    grads = [t.grad for t in leaves if t is not None]
    with torch.no_grad():  # and the inference path
        plain = cpu_products.linear(rows, weight, bias, weight_is_kernel=weight_is_kernel)
    return out.detach(), grads, plain


def _weight_gradients_in(monkeypatch, blocks):
    """Reduce weight gradients over all tokens in one product ("one") or in
    blocks of 8 tokens, the last one short ("blocks": the model's 1,024-token
    blocks, at the tests' sizes), through oneDNN's inner product (as where
    the matmul's float32 mode is not used)."""
    monkeypatch.setattr(cpu_products, "TOKENS_PER_PRODUCT", 8 if blocks == "blocks" else 1 << 62)
    monkeypatch.setattr(cpu_products, "batched_products_use_onednn", lambda: False)


@needs_onednn
def test_kernel_gradient_is_one_product_in_onednns_float32_mode(monkeypatch):
    """Where `batched_products_use_onednn()`, a kernel's gradient is one
    `torch.mm` of the transposed rows inside the float32 mode (put back
    after), float64's numbers to float32's rounding, whatever the layouts."""
    import torch

    if not cpu_products.batched_products_stay_float32():
        pytest.skip("oneDNN takes no float32 batched products here")
    _use(monkeypatch, True)
    modes = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a: modes.append(
        torch.backends.mkldnn.matmul.fp32_precision) or mm(*a))
    before = torch.backends.mkldnn.matmul.fp32_precision
    rows, g = _tensor((4, 9, 40), 0)[:, 2:, :].reshape(-1, 40), _tensor((28, 60), 1)
    pairs = ((rows, g), (g, rows), (rows, g[:, ::2]), (rows[:, :7], _tensor((60, 28), 2).t()))
    for a, b in pairs:
        got = cpu_products.kernel_gradient(a, b)
        assert got.shape == (a.shape[1], b.shape[1]) and got.is_contiguous()
        expected = a.double().t() @ b.double()
        np.testing.assert_allclose(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert modes == ["bf16"] * len(pairs)
    assert torch.backends.mkldnn.matmul.fp32_precision == before


@needs_onednn
@pytest.mark.parametrize("blocks", ["one", "blocks"])
def test_kernel_gradient_matches_aten(monkeypatch, blocks):
    import torch

    _use(monkeypatch, True)
    _weight_gradients_in(monkeypatch, blocks)
    inner_products = []
    monkeypatch.setattr(cpu_products, "_linear_pointwise",
                        lambda *a, f=cpu_products._linear_pointwise: inner_products.append(1)
                        or f(*a))
    rows, g = _tensor((4, 9, 40), 0)[:, 2:, :].reshape(-1, 40), _tensor((28, 60), 1)
    narrow = _tensor((28, 3), 3)  # (40 - 3) * 28 > 2 * 40 * 3: copies the upstream's blocks
    pairs = ((rows, g), (g, rows), (rows, g[:, ::2]), (rows[:, :7], _tensor((60, 28), 2).t()),
             (rows, narrow), (rows, _tensor((3, 28), 4).t()))
    for a, b in pairs:
        got = cpu_products.kernel_gradient(a, b)
        assert got.shape == (a.shape[1], b.shape[1]) and got.is_contiguous()
        np.testing.assert_allclose(got, torch.mm(a.t(), b), rtol=1e-5, atol=1e-4)
    assert len(inner_products) == (6 if blocks == "one" else 6 * 4)  # 28 tokens: 8+8+8+4


@pytest.mark.parametrize("tokens, inputs, outputs, copies_upstream", [
    (2048, 1024, 256, True),  # BERT-mini's feed-forward output
    (4096, 1536, 384, True),  # MiniLM's, 16 x 256 tokens
    (2048, 3072, 768, False),  # BERT-base's: measured no faster
    (2048, 768, 3072, False),  # a wider output
    (2048, 768, 768, False),
    (28, 40, 3, True)])
def test_kernel_gradient_copies_the_narrower_operand(tokens, inputs, outputs, copies_upstream):
    assert cpu_products._copies_upstream(tokens, inputs, outputs) is copies_upstream


@needs_onednn
def test_kernel_gradient_copies_the_upstream_where_narrower(monkeypatch):
    _use(monkeypatch, True)
    _weight_gradients_in(monkeypatch, "blocks")
    first_operands = []
    monkeypatch.setattr(cpu_products, "_linear_pointwise",
                        lambda x, *a, f=cpu_products._linear_pointwise:
                        first_operands.append(tuple(x.shape)) or f(x, *a))
    rows = _tensor((28, 40), 0)
    cpu_products.kernel_gradient(rows, _tensor((28, 3), 1))  # the upstream's blocks copied
    cpu_products.kernel_gradient(rows, _tensor((28, 60), 2))  # the inputs'
    assert first_operands == [(3, 8)] * 3 + [(3, 4)] + [(40, 8)] * 3 + [(40, 4)]


@needs_onednn
@pytest.mark.parametrize("blocks", ["one", "blocks"])
@pytest.mark.parametrize("case", ["kernel", "kernel slice", "out-in", "no bias", "empty"])
@pytest.mark.parametrize("upstream_kind", ["dense", "broadcast", "transposed"])
def test_linear_matches_aten(monkeypatch, case, upstream_kind, blocks):
    import torch

    _weight_gradients_in(monkeypatch, blocks)

    rows = _tensor((4, 9, 40), 0)[:, 2:, :].reshape(-1, 40)  # 28 rows
    if case == "empty":
        rows = rows[:0]
    weight_is_kernel = case != "out-in"
    weight = {"kernel slice": _tensor((40, 96), 1)[:, 10:70],  # strided columns
              "out-in": _tensor((60, 40), 1)}.get(case, _tensor((40, 60), 1))
    bias = None if case == "no bias" else _tensor((60,), 2)
    upstream = {"dense": _tensor((len(rows), 60), 3),
                "broadcast": _tensor((1, 60), 3).expand(len(rows), 60),  # a sum's gradient
                "transposed": _tensor((60, len(rows)), 3).t()}[upstream_kind]
    fast = _run_linear(monkeypatch, True, rows, weight, bias, weight_is_kernel, upstream)
    aten = _run_linear(monkeypatch, False, rows, weight, bias, weight_is_kernel, upstream)
    assert fast[0].shape == (len(rows), 60)
    np.testing.assert_allclose(fast[0], aten[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast[2], aten[0], rtol=1e-5, atol=1e-5)
    assert len(fast[1]) == (2 if bias is None else 3)
    for g_fast, g_aten in zip(fast[1], aten[1]):
        assert g_fast.shape == g_aten.shape
        np.testing.assert_allclose(g_fast, g_aten, rtol=1e-5, atol=1e-4)
    if len(rows):
        assert float(fast[1][1].abs().max()) > 0.1  # the weight's gradient is not empty
        assert fast[1][1].is_contiguous()  # as ATen gives it, for the optimizer's passes
    assert bool(torch.isfinite(fast[0]).all())


@needs_onednn
def test_addmm_and_mm_match_aten(monkeypatch):
    import torch

    a, b, bias = _tensor((30, 20), 0), _tensor((20, 50), 1), _tensor((50,), 2)
    c = _tensor((40, 50), 3)
    _use(monkeypatch, True)
    fast = (cpu_products.addmm(bias, a, b), cpu_products.mm(a.t()[:, :25], c[:25]),
            cpu_products.mm(a, b[:, ::2]), cpu_products.mm(a[:0], b))
    _use(monkeypatch, False)
    expected = (torch.addmm(bias, a, b), torch.mm(a.t()[:, :25], c[:25]),
                torch.mm(a, b[:, ::2]), torch.mm(a[:0], b))
    for f, e in zip(fast, expected):
        np.testing.assert_allclose(f, e, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_other_dtypes_keep_atens_product(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(cpu_products, "_linear_pointwise", lambda *a: calls.append(a))
    _use(monkeypatch, True)
    a, b = _tensor((8, 4), 0).bfloat16(), _tensor((4, 6), 1).bfloat16()
    bias = _tensor((6,), 2).bfloat16()
    out = cpu_products.linear(a, b, bias)
    assert out.dtype == torch.bfloat16 and not calls
    cpu_products.mm(a.float(), b.float())
    assert len(calls) == 1  # float32 goes through it


@needs_onednn
@pytest.mark.parametrize("blocks", ["one", "blocks"])
def test_feed_forward_gradients_match_aten(monkeypatch, blocks):
    import torch

    _weight_gradients_in(monkeypatch, blocks)

    x, up = _tensor((2, 7, 16), 0), _tensor((16, 32), 1)
    up_bias, down, down_bias = _tensor((32,), 2), _tensor((32, 16), 3), _tensor((16,), 4)
    upstream = _tensor((2, 7, 16), 5)
    results = []
    for onednn in (True, False):
        _use(monkeypatch, onednn)
        leaves = [t.detach().clone().requires_grad_(True)
                  for t in (x, up, up_bias, down, down_bias)]
        out = fused_kernels.feed_forward(*leaves)
        out.backward(upstream)
        results.append((out.detach(), [t.grad for t in leaves]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for g_fast, g_aten in zip(results[0][1], results[1][1]):
        assert float(torch.abs(g_fast).max()) > 0.01
        np.testing.assert_allclose(g_fast, g_aten, rtol=1e-5, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("head", ["classifier", "pretraining"])
def test_training_step_matches_aten(monkeypatch, head):
    """Two SGD steps of a model through oneDNN's products and through ATen's:
    the same weights (the masked-LM head's tied logits included)."""
    from bertdesk import BertBackbone
    from bertdesk.models.bert_pretraining_model import BertPretrainingModel
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier

    x = random_batch(seq=10)
    if head == "classifier":
        def build():
            return BertTextClassifier(BertBackbone(**TINY), num_classes=3)
        y = np.array([0, 2, 1], "int32")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        def build():
            return BertPretrainingModel(BertBackbone(**TINY))
        x["mask_positions"] = np.array([[1, 3], [2, 4], [0, 1]], "int32")
        y = {"mlm_logits": np.array([[7, 9], [11, 13], [15, 17]], "int32"),
             "nsp_logits": np.array([0, 1, 1], "int32")}
        loss = {"mlm_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                "nsp_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    weights = None
    results = []
    for onednn in (True, False):
        _use(monkeypatch, onednn)
        keras.utils.set_random_seed(5)
        model = build()
        model(x)
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
        for _ in range(2):
            model.train_on_batch(x, y)
        results.append(model.get_weights())
    changed = sum(not np.allclose(a, b) for a, b in zip(weights, results[0]))
    assert changed > 10
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# === Inference projections with the bias and the GELU in oneDNN's epilogue ===

needs_bf16_onednn = pytest.mark.skipif(
    not (IS_TORCH and cpu_products._has_bf16_kernels()), reason="no oneDNN bf16 kernels here")


def _projection_case(layout, dtype):
    """(rows, kernel, bias) in `dtype` for a layout the model hands over."""
    rows = _tensor((4, 9, 40), 0)[:, 2:, :].reshape(-1, 40)  # 28 rows
    kernel, bias = _tensor((40, 60), 1) / 6, _tensor((60,), 2)
    if layout == "strided rows":
        rows = _tensor((28, 80), 0)[:, ::2]
    elif layout == "kernel slice":
        kernel = _tensor((40, 96), 1)[:, 10:70] / 6
    elif layout == "no bias":
        bias = None
    return [t if t is None else t.to(dtype) for t in (rows, kernel, bias)]


@needs_onednn
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "strided rows", "kernel slice", "no bias"])
def test_inference_linear_matches_the_formula(monkeypatch, dtype, gelu, layout):
    """The product, bias and GELU in one oneDNN call against float64 from the
    same (rounded) inputs: within one rounding of the output's dtype (bf16:
    the result is rounded once, where ATen's addmm and gelu_ round twice)."""
    import torch
    from torch.nn import functional

    if dtype == "bfloat16" and not cpu_products._has_bf16_kernels():
        pytest.skip("no oneDNN bf16 kernels here")
    _use(monkeypatch, True)
    rows, kernel, bias = _projection_case(layout, getattr(torch, dtype))
    with torch.no_grad():
        out = cpu_products.inference_linear(rows, kernel, bias, gelu=gelu)
    assert out is not None and out.dtype == rows.dtype and out.shape == (28, 60)
    expected = rows.double() @ kernel.double() + (0 if bias is None else bias.double())
    if gelu:
        expected = functional.gelu(expected)
        assert float((expected < 0).double().mean()) > 0.2  # the GELU's negative side is hit
    step = 2.0 ** -8 if dtype == "bfloat16" else 1e-6
    np.testing.assert_allclose(out.double(), expected, rtol=step, atol=step * 4)
    # and what the model computed before, within its own second rounding
    with torch.no_grad():
        aten = functional.linear(rows, kernel.t(), bias)
        aten = functional.gelu(aten) if gelu else aten
    np.testing.assert_allclose(out.double(), aten.double(), rtol=3 * step, atol=step * 8)


@needs_bf16_onednn
def test_inference_linear_leaves_autograd_and_other_cases_to_the_caller(monkeypatch):
    import torch

    _use(monkeypatch, True)
    rows, kernel, bias = _projection_case("contiguous", torch.bfloat16)
    assert cpu_products.inference_linear(rows, kernel, bias) is not None  # nothing needs grads
    kernel.requires_grad_(True)
    assert cpu_products.inference_linear(rows, kernel, bias) is None  # training: recorded
    with torch.no_grad():
        assert cpu_products.inference_linear(rows, kernel, bias) is not None
    kernel.requires_grad_(False)
    assert cpu_products.inference_linear(rows.half(), kernel.half(), bias.half()) is None
    assert cpu_products.inference_linear(rows, kernel.float(), bias) is None  # mixed dtypes
    assert cpu_products.inference_linear(rows[:0], kernel, bias) is None  # empty
    monkeypatch.setattr(cpu_products, "_has_bf16_kernels", lambda: False)
    assert cpu_products.inference_linear(rows, kernel, bias) is None  # CPU without bf16
    float_case = _projection_case("contiguous", torch.float32)
    assert cpu_products.inference_linear(*float_case) is not None
    _use(monkeypatch, False)  # float32 products left to ATen (MKL) on this CPU
    assert cpu_products.inference_linear(*float_case) is None


@needs_bf16_onednn
@pytest.mark.parametrize("gelu", [False, True])
def test_the_layers_projection_takes_the_fused_call_only_outside_autograd(monkeypatch, gelu):
    """`fused_kernels.linear` (every Dense of the backbone on PyTorch) goes
    through `inference_linear` where nothing is recorded, and gives the
    numbers of its own ATen path within bf16's rounding; with a gradient
    recorded it keeps ATen's product and autograd."""
    import torch

    calls = []
    original = cpu_products.inference_linear
    monkeypatch.setattr(cpu_products, "inference_linear",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    x = _tensor((2, 14, 40), 0).bfloat16()
    kernel, bias = (_tensor((40, 60), 1) / 6).bfloat16(), _tensor((60,), 2).bfloat16()
    with torch.no_grad():
        fast = fused_kernels.linear(x, kernel, bias, gelu=gelu)
        monkeypatch.setattr(cpu_products, "_has_bf16_kernels", lambda: False)
        plain = fused_kernels.linear(x, kernel, bias, gelu=gelu)
    assert fast.shape == plain.shape == (2, 14, 60) and len(calls) == 2
    np.testing.assert_allclose(fast.double(), plain.double(), rtol=2 ** -6, atol=2 ** -6)
    assert float((fast.double() - plain.double()).abs().max()) < 0.1
    monkeypatch.undo()
    leaf = kernel.clone().requires_grad_(True)
    out = fused_kernels.linear(x, leaf, bias, gelu=gelu)
    out.float().sum().backward()
    assert out.requires_grad and leaf.grad is not None and float(leaf.grad.abs().max()) > 0.1


@needs_onednn
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("gelu", [False, True])
def test_a_packed_kernel_gives_the_plain_kernels_numbers(monkeypatch, dtype, gelu):
    """`pack` only changes the layout oneDNN reads: bit for bit the plain
    kernel's outputs, for any number of rows (the pack is made without
    knowing them), strided rows, and none."""
    import torch

    if dtype == "bfloat16" and not cpu_products._has_bf16_kernels():
        pytest.skip("no oneDNN bf16 kernels here")
    _use(monkeypatch, True)
    rows, kernel, bias = _projection_case("contiguous", getattr(torch, dtype))
    packed = cpu_products.pack(kernel)
    assert packed.is_mkldnn and tuple(packed.shape) == (60, 40)
    with torch.no_grad():
        for x in (rows, rows[:1], rows[:5], torch.cat([rows] * 9), _tensor((28, 80), 3)[:, ::2]):
            x = x.to(rows.dtype)
            plain = cpu_products.inference_linear(x, kernel, bias, gelu=gelu)
            ours = cpu_products.inference_linear(x, packed, bias, gelu=gelu)
            assert ours.dtype == plain.dtype and ours.shape == plain.shape
            assert torch.equal(ours, plain)
        empty = cpu_products.inference_linear(rows[:0], packed, bias, gelu=gelu)
    assert empty.shape == (0, 60) and empty.dtype == rows.dtype


@needs_bf16_onednn
def test_kernels_are_packed_for_bf16_inference_only(monkeypatch):
    """Mixed precision's bf16 kernels are kept packed where nothing is
    recorded, in place of the kept cast (one copy per kernel); float32,
    float16 and a bfloat16 variable's own kernel are not packed,
    nor any kernel while autograd records (frozen weights too: an
    attribution's gradient flows through the product)."""
    import torch

    layer = keras.layers.Dense(6, dtype="mixed_bfloat16")
    layer.build((None, 4))
    stored = layer.kernel.value
    assert cpu_products.packs(stored, torch.bfloat16)
    assert not cpu_products.packs(stored, torch.float32)
    assert not cpu_products.packs(stored, torch.float16)
    assert not cpu_products.packs(stored.bfloat16(), torch.bfloat16)  # a bf16 model's own kernel
    with torch.no_grad():
        plain = fused_kernels.weight(layer.kernel, "bfloat16")
        packed = fused_kernels.product_kernel(layer.kernel, "bfloat16")
        assert not plain.is_mkldnn and packed.is_mkldnn
        assert packed is fused_kernels.product_kernel(layer.kernel, "bfloat16")
        assert list(fused_kernels._CASTS._kept[stored]) == [(torch.bfloat16, True)]
        assert not fused_kernels.product_kernel(layer.kernel, "float32").is_mkldnn
    layer.trainable = False
    assert not stored.requires_grad  # frozen, yet with autograd recording:
    x = torch.ones(3, 4, dtype=torch.bfloat16, requires_grad=True)
    kernel = fused_kernels.product_kernel(layer.kernel, "bfloat16")
    assert not kernel.is_mkldnn
    fused_kernels.linear(x, kernel, fused_kernels.weight(layer.bias, "bfloat16")).sum().backward()
    assert x.grad is not None
    monkeypatch.setattr(cpu_products, "_has_bf16_kernels", lambda: False)
    assert not cpu_products.packs(stored, torch.bfloat16)


@needs_onednn
def test_large_float32_kernels_are_packed_for_float32_inference(monkeypatch):
    """A float32 kernel of at least `FLOAT32_PACK_FROM` bytes is kept packed
    for float32 products where oneDNN takes them and autograd records
    nothing: the plain kernel's numbers bit for bit, one copy kept, made
    again after the variable changes, and dropped when a training step reads
    the kernel; smaller kernels and ATen's products keep the plain kernel."""
    import torch

    layer = keras.layers.Dense(60, dtype="float32")
    layer.build((None, 40))
    stored = layer.kernel.value
    _use(monkeypatch, True)
    monkeypatch.setattr(cpu_products, "FLOAT32_PACK_FROM", 40 * 60 * 4)
    assert cpu_products.packs(stored, torch.float32)
    assert not cpu_products.packs(stored, torch.float16)
    assert not cpu_products.packs(stored[:, :59], torch.float32)  # under the size
    x = _tensor((28, 40), 0)
    bias = fused_kernels.weight(layer.bias, "float32")
    with torch.no_grad():
        packed = fused_kernels.product_kernel(layer.kernel, "float32")
        assert packed.is_mkldnn and packed is fused_kernels.product_kernel(layer.kernel, "float32")
        assert fused_kernels.weight(layer.kernel, "float32") is stored  # the plain read
        assert list(fused_kernels._CASTS._kept[stored]) == [(torch.float32, True)]
        for gelu in (False, True):
            assert torch.equal(fused_kernels.linear(x, packed, bias, gelu=gelu),
                               fused_kernels.linear(x, stored, bias, gelu=gelu))
        layer.kernel.assign(np.full((40, 60), 0.5, "float32"))
        again = fused_kernels.product_kernel(layer.kernel, "float32")
        assert again is not packed
        np.testing.assert_allclose(fused_kernels.linear(x, again, bias).numpy(),
                                   (x @ torch.full((40, 60), 0.5) + bias).numpy(), rtol=1e-5)
    trained = fused_kernels.product_kernel(layer.kernel, "float32")  # autograd recording
    assert trained is stored and not fused_kernels._CASTS._kept.get(stored)
    monkeypatch.setattr(cpu_products, "FLOAT32_PACK_FROM", 40 * 60 * 4 + 1)
    assert not cpu_products.packs(stored, torch.float32)
    monkeypatch.setattr(cpu_products, "FLOAT32_PACK_FROM", 0)
    for value, packs in (("auto", True), ("off", False), ("0", False), ("", True)):
        monkeypatch.setenv("BERTDESK_PACK_FLOAT32", value)
        assert cpu_products.packs(stored, torch.float32) is packs, value
    monkeypatch.setenv("BERTDESK_PACK_FLOAT32", "always")
    with pytest.raises(ValueError, match="BERTDESK_PACK_FLOAT32='always'"):
        cpu_products.packs(stored, torch.float32)
    monkeypatch.delenv("BERTDESK_PACK_FLOAT32")
    # chosen by the probe: packed only where oneDNN measured far faster than MKL
    for ratio, packs in ((2.1, True), (cpu_products.FLOAT32_PACK_RATIO, True), (1.3, False)):
        monkeypatch.setattr(cpu_products, "_decision", lambda ratio=ratio: (True, ratio))
        assert cpu_products.packs(stored, torch.float32) is packs, ratio
        assert cpu_products.packs(stored, torch.bfloat16) is cpu_products._has_bf16_kernels()
    _use(monkeypatch, False)
    assert not cpu_products.packs(stored, torch.float32)


# === The choice ===

@pytest.fixture
def fresh_decision():
    cpu_products._decision.cache_clear()
    yield
    cpu_products._decision.cache_clear()


@pytest.mark.parametrize("setting, expected", [("aten", False), ("ATEN", False),
                                               ("onednn", ONEDNN_AVAILABLE)])
def test_the_environment_variable_forces_the_choice(monkeypatch, fresh_decision,
                                                    setting, expected):
    monkeypatch.setattr(cpu_products, "_measure", lambda: pytest.fail("measured"))
    monkeypatch.setenv(cpu_products.ENV, setting)
    assert cpu_products.products_use_onednn() is expected
    assert cpu_products.probe_ratio() is None


def test_an_unknown_setting_is_refused(monkeypatch, fresh_decision):
    monkeypatch.setenv(cpu_products.ENV, "mkl")
    with pytest.raises(ValueError, match="BERTDESK_TORCH_GEMM='mkl'.*auto, onednn, aten"):
        cpu_products.products_use_onednn()


@needs_onednn
@pytest.mark.parametrize("slow_mkl, ratio, expected", [
    (False, 2.2, True), (False, 1.3, True), (False, 1.1, False), (False, 0.6, False),
    # AVX-512 and not Intel: oneDNN unless it measures far slower (a Zen 4 host's
    # products are 5-13% faster through it, and its probe gave 0.78 beside another job)
    (True, 2.2, True), (True, 1.05, True), (True, 0.78, True), (True, 0.5, False)])
def test_auto_takes_onednn_where_it_measures_faster(monkeypatch, fresh_decision,
                                                   slow_mkl, ratio, expected):
    monkeypatch.delenv(cpu_products.ENV, raising=False)
    monkeypatch.setattr(cpu_products, "_measure", lambda: ratio)
    monkeypatch.setattr(cpu_products, "_mkl_takes_a_slow_path", lambda: slow_mkl)
    assert cpu_products.products_use_onednn() is expected
    assert cpu_products.probe_ratio() == ratio


def test_the_cpu_vendor_and_avx512_are_read_from_cpuinfo(tmp_path):
    def cpu(vendor, flags):
        path = tmp_path / f"{vendor}-{len(flags)}"
        path.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 25\n"
                        f"flags\t\t: {' '.join(flags)}\n\nprocessor\t: 1\n"
                        f"vendor_id\t: {vendor}\nflags\t\t: {' '.join(flags)}\n")
        return str(path)

    slow = cpu_products._mkl_takes_a_slow_path.__wrapped__
    assert slow(cpu("AuthenticAMD", ["fpu", "avx2", "avx512f", "avx512_bf16"]))  # Zen 4, 5
    assert not slow(cpu("AuthenticAMD", ["fpu", "avx2", "fma"]))  # Zen 3: MKL's AVX2 path
    assert not slow(cpu("GenuineIntel", ["fpu", "avx2", "avx512f", "amx_bf16"]))
    assert not slow(str(tmp_path / "missing"))


@needs_onednn
def test_the_measurement_times_both_products():
    ratio = cpu_products._measure(rows=64, width=32, repeats=2)
    assert np.isfinite(ratio) and ratio > 0


@pytest.mark.parametrize("variable,expected", [(cpu_products.ENV, "auto, onednn, aten"),
                                               ("BERTDESK_PACK_FLOAT32", "auto or off")])
def test_the_command_line_refuses_an_unknown_setting_before_any_work(monkeypatch, capsys,
                                                                     tmp_path, variable, expected):
    from bertdesk.cli import main as cli_main

    monkeypatch.setenv(variable, "fast")
    assert cli_main(["predict", "--model", str(tmp_path / "none"), "--data",
                     str(tmp_path / "none.csv"), "--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{variable}='fast'" in err and expected in err
    assert "none.csv" not in err  # stopped before opening the files


# === oneDNN's primitive caches ===

def test_the_cache_limits_leave_the_users_own_settings(monkeypatch):
    for names in cpu_products.PRIMITIVE_CACHES:
        for name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DNNL_PRIMITIVE_CACHE_CAPACITY", "500")  # oneDNN's older name
    assert cpu_products.limit_primitive_caches() == {"LRU_CACHE_CAPACITY": "64"}
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    assert os.environ["DNNL_PRIMITIVE_CACHE_CAPACITY"] == "500"
    monkeypatch.delenv("DNNL_PRIMITIVE_CACHE_CAPACITY")
    assert cpu_products.limit_primitive_caches() == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "128"}
    assert cpu_products.limit_primitive_caches() == {}  # both set now


# Products of `shapes` distinct row counts, twice round; oneDNN logs every
# primitive it builds (ONEDNN_VERBOSE, read at its first primitive, as the
# capacities are): prints how many it built.
PRODUCTS = """
import sys
import torch
from bertdesk.layers import cpu_products
weight = torch.randn(16, 8)
for _ in range(2):
    for rows in range(1, int(sys.argv[1]) + 1):
        cpu_products.mm(torch.randn(rows, 16), weight)
"""


def built_primitives(code, *args, **env_changes):
    """How many primitives oneDNN built running `code` (ONEDNN_VERBOSE, read
    at its first primitive, as the capacities are), by their description."""
    names = {name for names in cpu_products.PRIMITIVE_CACHES for name in names}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(KERAS_BACKEND="torch", BERTDESK_TORCH_GEMM="onednn",
               ONEDNN_VERBOSE="profile_create", PYTHONPATH=str(ROOT), **env_changes)
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    built = [line.split(",", 5)[5].rsplit(",", 1)[0] for line in out.stdout.splitlines()
             if line.startswith("onednn_verbose") and "create:cache_miss" in line]
    return len(built), len(set(built))


# oneDNN's entries for products: each of these takes two
ENTRIES = cpu_products.PRIMITIVE_CACHES[("ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                                         "DNNL_PRIMITIVE_CACHE_CAPACITY")]


@needs_onednn
def test_onednn_keeps_at_most_the_limits_primitives():
    # more shapes than the limit holds, taken in turn: each is built again in the second round
    assert built_primitives(PRODUCTS, ENTRIES // 2 + 16) == (ENTRIES + 32, ENTRIES // 2 + 16)
    # fewer: built once
    assert built_primitives(PRODUCTS, 16) == (16, 16)
    # the user's own capacities (here oneDNN's default) keep them all
    assert built_primitives(PRODUCTS, ENTRIES // 2 + 16, ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024",
                            LRU_CACHE_CAPACITY="1024") == (ENTRIES // 2 + 16,) * 2


# Three MLM + NSP pretraining steps of one shape, the largest set of
# primitives a step uses (a tiny model: the shapes differ, their count not).
PRETRAINING_STEPS = """
import keras, numpy as np, bertdesk
from bertdesk.pretraining.objectives import masked_lm_loss
from bertdesk.training.optimization import bert_adamw
model = bertdesk.BertPretrainingModel(bertdesk.BertBackbone(
    vocabulary_size=300, num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64))
model.compile(optimizer=bert_adamw(1e-4, 100), loss={
    "mlm_logits": masked_lm_loss,
    "nsp_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
rng = np.random.default_rng(0)
x = {"token_ids": rng.integers(5, 300, (4, 32)).astype("int32"),
     "segment_ids": np.zeros((4, 32), "int32"), "padding_mask": np.ones((4, 32), "int32"),
     "mask_positions": np.tile(np.arange(1, 6, dtype="int32"), (4, 1))}
y = {"mlm_logits": rng.integers(5, 300, (4, 5)).astype("int32"),
     "nsp_logits": np.zeros((4,), "int32")}
for _ in range(3):
    model.train_on_batch(x, y)
"""


@needs_onednn
def test_a_pretraining_step_of_one_shape_builds_nothing_after_its_first():
    built, distinct = built_primitives(PRETRAINING_STEPS)
    # the products went through oneDNN: the kernels' inner products alone make
    # 24 (more where the batched products and kernel gradients use it too)
    assert distinct >= 24
    assert built == distinct


# === Batched products through oneDNN (`onednn_batched_products`) ===
needs_batched = pytest.mark.skipif(
    not (IS_TORCH and cpu_products.batched_products_stay_float32()),
    reason="oneDNN takes no float32 batched products here (its bf16 math mode needs "
           "bf16 kernels and rounds on AMX)")


@needs_batched
@pytest.mark.parametrize("shape", [(64, 128, 64, 128), (16, 256, 32, 256), (4, 512, 64, 512),
                                   (3, 7, 5, 9), (192, 24, 32, 24)])
def test_batched_products_in_onednn_match_mkl(monkeypatch, shape):
    """The blocked attention's products (a transposed right operand, one
    scaled into an `out=` buffer, a transposed left one) inside the context
    equal float64's to float32 rounding, as MKL's do, and the process-wide
    setting is back afterwards (on every CPU where oneDNN keeps float32's
    sums, chosen by the speed measurement or not)."""
    import torch

    _use(monkeypatch, True)

    groups, rows, depth, cols = shape
    a, b = _tensor((groups, rows, depth), 0), _tensor((groups, cols, depth), 1)
    products = {  # name: the product, of float32 or (the reference) float64 operands
        "bmm": lambda x, y: torch.bmm(x, y.transpose(1, 2)),
        "baddbmm": lambda x, y: torch.baddbmm(x.new_empty(groups, rows, cols), x,
                                              y.transpose(1, 2), beta=0, alpha=0.125,
                                              out=x.new_empty(groups, rows, cols)),
        "transposed left": lambda x, y: torch.bmm(x.transpose(1, 2), x),
    }
    before = torch.backends.mkldnn.matmul.fp32_precision
    for name, product in products.items():
        mkl = product(a, b)
        with cpu_products.onednn_batched_products(a):
            assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
            onednn = product(a, b)
        assert torch.backends.mkldnn.matmul.fp32_precision == before
        if name == "baddbmm":
            reference = 0.125 * torch.bmm(a.double(), b.double().transpose(1, 2))
        else:
            reference = product(a.double(), b.double())
        tolerance = 2e-6 * float(reference.abs().max())
        np.testing.assert_allclose(onednn.double(), reference, atol=tolerance, err_msg=name)
        np.testing.assert_allclose(mkl.double(), reference, atol=tolerance, err_msg=name)


def test_batched_products_leave_other_tensors_alone(monkeypatch):
    """bf16, float64 and meta tensors, `torch.compile` and a process where the
    probe said no: the setting is not touched (and a setting of the user's
    own is put back after the context, even after an exception)."""
    import torch

    matmul = torch.backends.mkldnn.matmul
    monkeypatch.setattr(cpu_products, "batched_products_use_onednn", lambda: True)
    for like in (torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float64),
                 torch.ones(2, device="meta")):
        with cpu_products.onednn_batched_products(like):
            assert matmul.fp32_precision == "none"
    monkeypatch.setattr(cpu_products, "batched_products_use_onednn", lambda: False)
    with cpu_products.onednn_batched_products(torch.ones(2)):
        assert matmul.fp32_precision == "none"
    monkeypatch.setattr(cpu_products, "batched_products_use_onednn", lambda: True)
    matmul.fp32_precision = "tf32"  # (a property: monkeypatch cannot put it back)
    try:
        with pytest.raises(KeyError):
            with cpu_products.onednn_batched_products(torch.ones(2)):
                assert matmul.fp32_precision == "bf16"
                raise KeyError("inside")
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = "none"


def test_batched_probe_refuses_rounded_sums(monkeypatch):
    """The probe says no when a product rounds its operands (to bfloat16 here,
    as oneDNN's math mode may on AMX), and the decision says no on a CPU
    whose flags list AMX."""
    import torch

    assert cpu_products._batched_sums_stay_float32()
    real_bmm, real_baddbmm = torch.bmm, torch.baddbmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: real_bmm(a.bfloat16().float(), b))
    assert not cpu_products._batched_sums_stay_float32()
    monkeypatch.setattr(torch, "bmm", real_bmm)
    monkeypatch.setattr(torch, "baddbmm", lambda c, a, b, **kw: real_baddbmm(
        c, a.bfloat16().float(), b, **kw))
    assert not cpu_products._batched_sums_stay_float32()


def test_amx_flag_is_read_from_cpuinfo(tmp_path):
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\n")
    assert cpu_products._has_amx(str(amx))
    assert not cpu_products._has_amx(str(plain))
    assert not cpu_products._has_amx(str(tmp_path / "missing"))


@needs_batched
def test_batched_products_run_onednn_float32_kernels():
    """oneDNN's own log (`ONEDNN_VERBOSE`) in a fresh process: the products
    inside the context run a float32 matmul kernel on float32 memory."""
    code = ("import os; os.environ['KERAS_BACKEND'] = 'torch'\n"
            "os.environ['BERTDESK_TORCH_GEMM'] = 'onednn'\n"
            "import torch\n"
            "from bertdesk.layers import cpu_products\n"
            "assert cpu_products.batched_products_use_onednn()\n"
            "a = torch.randn(8, 64, 32)\n"
            "with cpu_products.onednn_batched_products(a):\n"
            "    torch.bmm(a, a.transpose(1, 2))\n")
    env = dict(os.environ, KERAS_BACKEND="torch", ONEDNN_VERBOSE="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [line for line in done.stdout.splitlines()
            if line.startswith("onednn_verbose") and ",exec," in line and ",matmul," in line]
    assert runs, done.stdout[-2000:]
    for line in runs:
        assert "src:f32" in line and "wei:f32" in line and "dst:f32" in line, line
        assert "amx" not in line, line


def _watch_batched_products(monkeypatch):
    """Records each `onednn_batched_products` entered (its tensor's dtype),
    each `bmm`/`baddbmm` made and those made outside one."""
    import contextlib

    import torch

    entered, outside, made = [], [], []
    inside = [False]

    @contextlib.contextmanager
    def recording(like):
        entered.append(like.dtype)
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False

    def watched(name, product):
        def call(*args, **kwargs):
            made.append(name)
            if not inside[0]:
                outside.append(name)
            return product(*args, **kwargs)
        return call

    for name in ("bmm", "baddbmm"):
        monkeypatch.setattr(torch, name, watched(name, getattr(torch, name)))
    monkeypatch.setattr(cpu_products, "onednn_batched_products", recording)
    return entered, outside, made


def test_blocked_attention_multiplies_inside_the_context(monkeypatch):
    """`fused_kernels.dropout_attention` runs its forward and backward
    products inside `onednn_batched_products` (each pass once), and every
    batched product it makes happens there."""
    import torch

    entered, outside, _ = _watch_batched_products(monkeypatch)
    q, k, v = (_tensor((2, 5, 3, 4), seed, grad=True) for seed in (0, 1, 2))
    keep = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(3)) > 0.2
    out = fused_kernels.dropout_attention(q, k, v, keep, torch.ones(2, 1, 1, 5), 0.5, 1.25)
    out.sum().backward()
    assert entered == [torch.float32, torch.float32] and outside == []


def test_inference_attention_multiplies_inside_the_context(monkeypatch):
    """`fused_kernels.attention_on_cpu` makes every batched product inside
    one `onednn_batched_products`, with blocks of one head at a time too."""
    import torch

    entered, outside, made = _watch_batched_products(monkeypatch)
    monkeypatch.setattr(fused_kernels, "SCORES_PER_GROUP", 5 * 5 * 4)  # one head
    q, k, v = (_tensor((2, 5, 3, 4), seed) for seed in (0, 1, 2))
    with torch.no_grad():
        fused_kernels.attention_on_cpu(q, k, v, torch.ones(2, 1, 1, 5, dtype=torch.bool), 0.5)
    assert entered == [torch.float32] and outside == []
    assert made.count("baddbmm") == made.count("bmm") == 6  # 2 sequences x 3 heads
