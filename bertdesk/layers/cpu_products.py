"""Float32 matrix products on PyTorch's CPU through oneDNN where its own
GEMM is slow.

PyTorch's x86 wheels multiply float32 matrices with the MKL they bundle
(`torch.addmm`, `torch.mm`, `nn.functional.linear`), and MKL picks its
kernels by CPU vendor: on AMD CPUs with AVX-512 it runs a path about half
as fast as the hardware. Measured on 2 AMD Zen 5 cores (AVX-512), BERT-base
products of 2,048 tokens: (2048, 768) x (768, 768) 217 GFLOP/s through
`addmm` against 516 through oneDNN, (2048, 768) x (768, 3072) 222 against
467, a weight gradient (768, 2048) x (2048, 768) 212 against 343; the
machine's own float32 peak there is about 480 (TensorFlow's and XLA's
kernels, the same chip). oneDNN is the library PyTorch's bfloat16 products
already use; it dispatches by instruction set, not vendor. PyTorch itself
sends float32 products to it only when reduced precision is allowed
(`torch.backends.mkldnn.matmul.fp32_precision`); here the product stays
float32 (the same numbers to rounding).

`products_use_onednn()` decides once per process: the environment variable
`BERTDESK_TORCH_GEMM` (`auto`, `onednn` or `aten`), and by default (`auto`)
the CPU and a measurement, the same (1024, 768) x (768, 768) product timed
both ways (about 0.15 s at the first product). A CPU with AVX-512 that is
not Intel's (`_mkl_takes_a_slow_path`) takes oneDNN unless it measures
clearly slower (below `_SLOWER`): MKL's vendor check is the cause, and it
holds on every such CPU measured. On 2 AMD Zen 5 cores the probe gave
1.9-2.3 (ATen's time over oneDNN's); on 2 AMD Zen 4 cores (AVX-512 on
256-bit units) 1.02-1.81, where oneDNN is 5-13% faster on every BERT-base
product, forward, input gradient and weight gradient alike (its kernels at
the GEMM peak, about 217 GFLOP/s, MKL's at 90% of it), and the whole model
gains (alternating in one process: BERT-base's forward pass 1.14x, training
step 1.04x, BERT-mini's 1.33x and 1.08x), yet a probe timed while another
process ran gave 0.78 there. Other CPUs take oneDNN only where it measures
at least `_FASTER` times as fast: 0.73-0.84 on 2 AMD Zen 3 cores (AVX2),
which keep MKL, as Intel CPUs are expected to, where MKL's own kernels are
the fast ones. (Until 2026-12-07 every CPU needed 1.25x, which left the Zen
4 hosts on MKL in most processes and on oneDNN in some.)

`addmm` and `mm` are `torch.addmm`/`torch.mm` for code that writes its own
backward pass (`fused_kernels.feed_forward`); `linear` is an autograd-aware
projection of 2-D rows. Everything else, and every other dtype and device,
goes to ATen as before, with one exception: `inference_linear`, a
projection where autograd records nothing, also takes bfloat16 products to
oneDNN's inner product itself, with the bias and the GELU in its epilogue
(ATen's bf16 `addmm` is oneDNN's product too, after a copy of the bias into
every output row).
"""

import contextlib
import functools
import os
import time

from bertdesk.training import allocator

ENV = "BERTDESK_TORCH_GEMM"
CHOICES = ("auto", "onednn", "aten")
_FASTER = 1.25  # how much faster oneDNN must measure to be used (where MKL is expected fast)
_SLOWER = 0.6  # how much slower it must measure to be refused (where MKL is expected slow)


def products_use_onednn():
    """Whether float32 CPU products go through oneDNN in this process (see
    the module's docstring); raises ValueError for an unknown
    `BERTDESK_TORCH_GEMM`."""
    return _decision()[0]


def probe_ratio():
    """ATen's time over oneDNN's for the probe product (None where it was
    not measured: forced by `BERTDESK_TORCH_GEMM`, or no oneDNN)."""
    return _decision()[1]


def setting():
    """`BERTDESK_TORCH_GEMM` as given (`auto` when unset); ValueError
    naming the variable for anything else than `auto`, `onednn`, `aten`."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(CHOICES)}")
    return value


def check_settings():
    """ValueError naming the variable for a `BERTDESK_TORCH_GEMM` or
    `BERTDESK_PACK_FLOAT32` this module does not know (the command line
    checks them before any work)."""
    setting()
    _packs_float32()


@functools.cache
def _decision():
    chosen = setting()
    if chosen == "aten" or not _has_linear_pointwise():
        return False, None
    if chosen == "onednn":
        return True, None
    ratio = _measure()
    return ratio >= (_SLOWER if _mkl_takes_a_slow_path() else _FASTER), ratio


@functools.cache
def _mkl_takes_a_slow_path(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU has AVX-512 and is not Intel's (Linux's `avx512f`
    flag and `vendor_id`): MKL, which PyTorch's float32 products call,
    dispatches by vendor and runs such a CPU on a path without AVX-512,
    while oneDNN dispatches by instruction set. False where it cannot tell."""
    vendor, flags = None, ()
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and vendor is None:
                    vendor = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = value.split()
                if vendor is not None and flags:
                    break
    except OSError:
        return False
    return vendor not in (None, "GenuineIntel") and "avx512f" in flags


@functools.cache
def _has_linear_pointwise():
    import torch

    limit_primitive_caches()  # before oneDNN's first primitive: it reads them once
    # eager CPU passes free what they allocate at every call: let glibc's heap keep it
    allocator.lift_dynamic_thresholds()
    try:
        return torch.backends.mkldnn.is_available() and bool(
            torch.ops.mkldnn._linear_pointwise.default)
    except (AttributeError, RuntimeError):
        return False


def limit_primitive_caches():
    """Have oneDNN keep at most `PRIMITIVE_CACHES`' number of the primitives
    it builds, in each of its two caches, unless the user set that cache's
    capacity (`ONEDNN_PRIMITIVE_CACHE_CAPACITY` or `DNNL_...`,
    `LRU_CACHE_CAPACITY`). Returns what was set, by name.

    oneDNN builds a primitive for every product shape (a batch's rows,
    each weight-gradient block) with its own JIT-compiled kernels, about
    half a megabyte each, and by default keeps 1,024 of them twice over:
    in its own cache and in ideep's, PyTorch's wrapper around it. With
    batches padded to their own length every length is a new set:
    fine-tuning MiniLM on 2,000 SST-2 sentences (two epochs, 63 batches
    each) built 671, and the process's heap in use grew from 432 to
    805 MB; with 64 kept in each it stays at 509. A training step builds
    30-44 (the same shapes in every layer; a product can take two of
    oneDNN's entries, and the MLM + NSP pretraining step needs more than
    64 of them, 80 to build nothing after its first step), so oneDNN keeps
    128 and ideep 64; a new batch length builds its set again (0.1-0.4 ms
    a primitive). Measured on 2 AMD Zen 5 cores with the command line's
    allocator (`training.allocator`), fresh processes alternating, that
    SST-2 job with validation and checkpoints (`bench/finetune_quality.py
    --whole-job`): peak 1,685-1,705 -> 1,320-1,331 MB (1,283-1,290 with
    64 and 64), 17.3-17.5 against 18.2-18.4 s; one epoch of 2,000 AG
    News texts at length 128: 2,494-2,532 -> 2,130-2,169 MB (1,994-2,030),
    26.4-28.4 s both ways, the same accuracy.

    The variables are read when oneDNN builds its first primitive, so this
    acts only if it runs before that: `_has_linear_pointwise` calls it,
    which every product routed here asks first, and so does the int8
    path's first product (`int8_kernels`). Process-wide, like the
    variables themselves; oneDNN's other users in the process (PyTorch's
    bf16 products among them) keep as many too."""
    chosen = {}
    for names, capacity in PRIMITIVE_CACHES.items():
        if not any(os.environ.get(name) for name in names):
            os.environ[names[0]] = chosen[names[0]] = str(capacity)
    return chosen


# Capacities: oneDNN's primitive cache (either name), ideep's.
PRIMITIVE_CACHES = {("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"): 128,
                    ("LRU_CACHE_CAPACITY",): 64}


def _measure(rows=1024, width=768, repeats=9, warmup=2):
    """ATen's best time over oneDNN's best for one projection, alternating
    the two so a slow moment of a shared machine hits both (and which goes
    first), after `warmup` calls of each: with one warm-up call and five
    timed, the ratio on a Zen 4 host ranged from 1.02 to 1.81 across fresh
    processes for products 5-13% faster through oneDNN."""
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=generator)
    kernel = torch.randn(width, width, generator=generator)
    bias = torch.randn(width, generator=generator)
    with torch.no_grad():
        aten = lambda: torch.addmm(bias, x, kernel)  # noqa: E731
        onednn = lambda: _linear_pointwise(x, kernel.t(), bias)  # noqa: E731
        best = {aten: float("inf"), onednn: float("inf")}
        for _ in range(warmup):  # oneDNN builds its kernel at the first call
            for f in best:
                f()
        for i in range(repeats):
            for f in (aten, onednn) if i % 2 == 0 else (onednn, aten):
                start = time.perf_counter()
                f()
                best[f] = min(best[f], time.perf_counter() - start)
    return best[aten] / best[onednn]


def _linear_pointwise(x, weight, bias, gelu=False):
    """`x @ weight.T + bias` (`weight` `(out, in)`, or packed by `pack`;
    `bias` or None), then the exact GELU if `gelu`, through oneDNN's inner
    product. Both matrices row- or column-major: other strides are copied
    first (oneDNN takes a reference loop for them, and a broadcast
    gradient, stride 0, took 5.1 s for a (1024, 2048) x (2048, 256)
    product)."""
    import torch

    weight = weight if weight.is_mkldnn else _plain(weight)
    return torch.ops.mkldnn._linear_pointwise(
        _plain(x), weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


def _plain(matrix):
    if matrix.is_contiguous() or matrix.t().is_contiguous():
        return matrix
    return matrix.contiguous()


def _applies(*tensors, bf16=False):
    """Whether oneDNN takes this product: float32 tensors where
    `products_use_onednn()`, or (`bf16`) bfloat16 ones where
    `_has_bf16_kernels()`; all on the CPU, none empty."""
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    if not all(t.dtype == dtype and t.device.type == "cpu" and t.numel()
               for t in tensors if t is not None):
        return False  # oneDNN makes no primitive for an empty matrix
    if torch.compiler.is_compiling():  # leave `torch.compile` its own lowering
        return False
    return _has_bf16_kernels() if bf16 else products_use_onednn()


def addmm(bias, a, b):
    """`torch.addmm(bias, a, b)` (2-D `a @ b + bias`) outside autograd."""
    import torch

    if _applies(a, b, bias):
        return _linear_pointwise(a, b.t(), bias)
    return torch.addmm(bias, a, b)


def mm(a, b):
    """`torch.mm(a, b)` outside autograd."""
    import torch

    if _applies(a, b):
        return _linear_pointwise(a, b.t(), None)
    return torch.mm(a, b)


def kernel_gradient(rows, g):
    """`rows.T @ g`, outside autograd: the gradient of a kernel `(in, out)`
    from its layer's input rows `(tokens, in)` and upstream gradient
    `(tokens, out)` (or, arguments swapped, of an `(out, in)` weight), as
    a row-major matrix.

    Through oneDNN's inner product of the transposed matrices, summed over
    blocks of `TOKENS_PER_PRODUCT` tokens: a reduction over more tokens ran
    slower per FLOP (on the Zen 5 host at 2,048 tokens, (768, 3072) 26.3 ms
    in one product against 23.4 in two; (3072, 768) 26.1 against 23.7; at
    4,096 tokens 56.6 and 74.7 against 47.3 and 49.4). oneDNN's own
    backward-weights primitive was no faster than the blocks (22-36 ms at
    2,048 tokens, varying from run to run, and 36.9 against 17.0 ms for the
    masked-LM head's tied logits at 320 positions) and needs copies of both
    inputs. `torch.mm` (MKL's path) where oneDNN is not used.

    oneDNN's inner product takes its first operand row-major, so each
    block of one of the two arrives through PyTorch's transposed copy (one
    thread), the other as oneDNN reorders it (a transposed view costs
    nothing more there). The copy goes to `g` instead, and the summed
    `(out, in)` product is transposed once at the end, where `g` is the
    much narrower (`_copies_upstream`): the feed-forward output's kernel
    of small models. On 2 AMD Zen 5 cores, the same numbers, 2,048 tokens
    of BERT-mini's (1024, 256) 3.45 -> 2.71 ms, 4,096 of MiniLM's
    (1536, 384) 14.65 -> 11.35; BERT-base's (3072, 768) gains nothing
    (25.3 against 25.4 ms), so it is left alone.

    Where `batched_products_use_onednn()`, one `torch.mm` in that float32
    mode instead: oneDNN's matmul reads the transposed rows in place, no
    copy and no blocks. On 2 AMD Zen 5 cores at 2,048 tokens, against the
    blocks: BERT-mini's kernels (256, 768) 1.74 -> 1.52 ms, (256, 256)
    0.76 -> 0.53, (256, 1024) 2.46 -> 2.27, (1024, 256) 2.42 -> 2.11;
    BERT-base's (768, 2304) 15.8 -> 15.1, (768, 768) 5.6 -> 4.7, (768,
    3072) 22.6 -> 21.6, (3072, 768) 23.9 -> 19.4; MiniLM's at 4,096 tokens
    10.9 -> 10.1 and 11.6 -> 9.9; errors against float64 the same."""
    import torch

    if not _applies(rows, g):
        return torch.mm(rows.t(), g)
    if batched_products_use_onednn():
        with _fp32_precision("bf16"):
            return torch.mm(rows.t(), g)
    swapped = _copies_upstream(*rows.shape, g.shape[1])
    first, second = (g, rows) if swapped else (rows, g)
    out = None
    for start in range(0, rows.shape[0], TOKENS_PER_PRODUCT):
        stop = start + TOKENS_PER_PRODUCT
        part = _linear_pointwise(first[start:stop].t(), second[start:stop].t(), None)
        out = part if out is None else out.add_(part)
    return out.t().contiguous() if swapped else out


def _copies_upstream(tokens, inputs, outputs):
    """Whether `kernel_gradient` copies the upstream gradient's blocks
    rather than the inputs': where that copies fewer elements than it
    saves (a transposed PyTorch copy runs at about half the speed of
    oneDNN's reorder of the other operand) even after transposing the
    `(outputs, inputs)` result. Measured: BERT-base's (3072, 768) at 2,048
    tokens broke even, so the rule asks for more than that."""
    return (inputs - outputs) * tokens > 2 * inputs * outputs


# Tokens reduced over in one product of `kernel_gradient`.
TOKENS_PER_PRODUCT = 1024


def inference_linear(rows, kernel, bias, gelu=False):
    """`rows @ kernel + bias` for 2-D `rows`, then the exact (erf) GELU if
    `gelu`, as one oneDNN inner product with the bias and the GELU in its
    epilogue, where autograd records nothing: bfloat16 wherever oneDNN has
    bf16 kernels for the CPU, float32 where `products_use_onednn()`. None
    elsewhere (and for `torch.compile`, other dtypes or devices, empty
    matrices): the caller runs its own product.

    bfloat16 is the case that gains: ATen's bf16 `addmm` also multiplies in
    oneDNN, but first copies the bias into every row of the output, and the
    GELU is another pass. Alternating in one process on 2 AMD Zen 5 cores
    with freed memory kept (`training.allocator`), the bf16 forward pass at
    batch 16 x 128: BERT-mini 22.7 -> 22.2 ms, BERT-base 450 -> 437 ms
    ((2048, 768) x (768, 3072) alone 10.5 -> 9.7 ms with the bias, 10.8 ->
    10.0 with the GELU too); with glibc's defaults the page faults of fresh
    output buffers vary more than that from run to run. In float32 the
    fused GELU gave the same numbers in the same time (BERT-mini 39.8
    against 39.5 ms). With autograd recording the bf16 step lost 1-2%
    through oneDNN's products, so training keeps ATen's there (`linear`)."""
    import torch

    if kernel.is_mkldnn:  # packed (`pack`): made only where this path applies
        if not rows.numel():  # (oneDNN makes no primitive for an empty matrix)
            return rows.new_zeros((rows.shape[0], kernel.shape[0]))
        return _linear_pointwise(rows, kernel, bias, gelu)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (rows, kernel, bias)):
        return None
    if not _applies(rows, kernel, bias, bf16=rows.dtype == torch.bfloat16):
        return None
    return _linear_pointwise(rows, kernel.t(), bias, gelu)


def packs(kernel, dtype):
    """Whether a stored `kernel`'s inference products in `dtype` (a torch
    dtype) go through `inference_linear` with the kernel kept packed
    (`pack`): a float32 kernel read in bfloat16 (mixed precision) on a CPU
    with oneDNN's bf16 kernels, where the pack takes the place of the kept
    bf16 cast; and a float32 kernel read in float32 of at least
    `FLOAT32_PACK_FROM` bytes where `products_use_onednn()`, a second copy
    beside the variable.

    With a plain float32 kernel of that size oneDNN's inner product copies
    the kernel's blocks into a scratchpad at every call: on 2 AMD Zen 5
    cores, 2,048 rows times BERT-base's feed-forward kernels, (768, 3072)
    20.1 against 18.0 ms packed and (3072, 768) 21.2 against 18.0, while
    (768, 2304) took 13.4 and 13.3, (768, 768) 4.4 both ways and the
    smaller kernels of MiniLM and mini 1-5% less packed; BERT-base's whole
    float32 forward pass at 16 x 128 832-858 -> 748-759 ms with its
    feed-forward kernels packed (fresh processes alternating), for their
    copy, 226 MB (loading BERT-base and predicting, `bench/load_memory.py`:
    peak 943 -> 1,236 MB). Only where oneDNN measured far faster than
    MKL (`_float32_pack_pays`). `BERTDESK_PACK_FLOAT32=off` keeps float32
    kernels plain. A bfloat16 model's own kernels, and smaller float32
    ones, are not packed."""
    import torch

    if kernel.device.type != "cpu":
        return False
    if dtype == torch.float32 and kernel.dtype == torch.float32:
        return (kernel.numel() * 4 >= FLOAT32_PACK_FROM and _packs_float32()
                and products_use_onednn() and _float32_pack_pays())
    if dtype != torch.bfloat16 or kernel.dtype == dtype:
        return False
    return _has_bf16_kernels()


# The smallest float32 kernel `packs` keeps packed for float32 products, in
# bytes: BERT-base's feed-forward kernels (9 MiB each) gain 10-18%, its
# (768, 2304) attention kernel (7 MiB) nothing.
FLOAT32_PACK_FROM = 8 << 20


def _float32_pack_pays():
    """Whether `products_use_onednn()`'s probe measured oneDNN at least
    `FLOAT32_PACK_RATIO` times as fast as ATen (or oneDNN was chosen by
    `BERTDESK_TORCH_GEMM=onednn`): where its float32 kernels run that far
    ahead of MKL's, the per-call copy of a plain kernel is a tenth of the
    product (2 AMD Zen 5 cores, probe 1.9-2.3: 10-18% a feed-forward
    product, BERT-base's forward pass 1.10-1.13x). On 2 AMD Zen 4 cores
    (probe 1.02-1.39 on a quiet machine, up to 1.81 beside another job;
    oneDNN's products at that host's GEMM peak, about 217 GFLOP/s, half
    Zen 5's) the pack gained 2-6% a feed-forward product and 3% on
    BERT-base's forward pass (1,865 -> 1,806 ms, alternating in one
    process): not worth a second copy of the kernels, 226 MB there."""
    ratio = probe_ratio()
    return ratio is None or ratio >= FLOAT32_PACK_RATIO


# The probe ratio from which float32 kernels are kept packed (above).
FLOAT32_PACK_RATIO = 1.75


def _packs_float32():
    """False where `BERTDESK_PACK_FLOAT32` is `off` (or 0, false, no): the
    user keeps the memory of packed float32 kernels; ValueError naming the
    variable for anything else than those and `auto`."""
    value = os.environ.get("BERTDESK_PACK_FLOAT32", "auto").strip().lower() or "auto"
    if value in ("off", "0", "false", "no"):
        return False
    if value != "auto":
        raise ValueError(f"BERTDESK_PACK_FLOAT32={os.environ['BERTDESK_PACK_FLOAT32']!r}: "
                         "expected auto or off")
    return True


def pack(kernel):
    """A kernel `(in, out)` reordered into the blocked layout oneDNN's inner
    product takes (it reorders a plain weight so at every call), as an
    opaque oneDNN tensor `(out, in)` that only `inference_linear` reads."""
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(_plain(kernel.t()))


@functools.cache
def _has_bf16_kernels():
    """Whether PyTorch sends bf16 products to oneDNN on this CPU itself
    (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`: AVX-512 with BW, VL
    and DQ, where oneDNN converts to and from float32 if the CPU has no
    bf16 instructions; Arm with bf16); elsewhere ATen keeps them (its own
    loops), and so does `inference_linear`."""
    import torch

    try:
        return _has_linear_pointwise() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def onednn_batched_products(like):
    """Within it, PyTorch's float32 batched products (`bmm`, `baddbmm`) go
    through oneDNN's matmul, in float32, where `batched_products_use_onednn()`
    and `like` (a tensor of the products) is a float32 CPU tensor outside
    `torch.compile`; elsewhere it changes nothing.

    PyTorch sends float32 batched products to MKL, whose path on AMD CPUs
    runs at about half the hardware's rate (185-225 GFLOP/s on 2 Zen 5
    cores), and has no switch for oneDNN in float32 alone: oneDNN takes them
    when `torch.backends.mkldnn.matmul.fp32_precision` is "bf16", which
    allows it to round the operands to bfloat16 but does not make it. On
    CPUs without AMX its matmul has no such kernel and computes in float32
    (`brg_matmul:avx512_core`, the same kernel as for a strict float32
    product): 450-510 GFLOP/s there, with float32's rounding. The setting is
    process-wide, so it is made for the products inside and put back (a
    float32 product of another thread meanwhile goes to oneDNN too, where
    the probe has shown it stays float32)."""
    import torch

    if (like.dtype != torch.float32 or like.device.type != "cpu"
            or torch.compiler.is_compiling() or not batched_products_use_onednn()):
        yield
        return
    with _fp32_precision("bf16"):
        yield


def batched_products_use_onednn():
    """Whether `onednn_batched_products` sends float32 batched products to
    oneDNN in this process: where `products_use_onednn()` (oneDNN measured
    faster than MKL for a float32 product) and `batched_products_stay_float32()`:
    PyTorch sends them to oneDNN in its "bf16" math mode (the CPU has its bf16
    kernels), the CPU has no AMX (where that mode does round to bfloat16),
    and a probe inside the mode gives float32's exact sums
    (`_batched_sums_stay_float32`)."""
    return _batched_decision()


def batched_products_stay_float32():
    """Whether oneDNN's matmul takes float32 batched products in its "bf16"
    math mode on this CPU and keeps float32's sums there, whatever the speed
    measurement chose: PyTorch sends them to oneDNN in that mode only where
    the CPU has oneDNN's bf16 kernels (elsewhere, as on AVX2 CPUs, MKL
    still multiplies them: the mode does nothing), not on AMX (which does
    round), and the probe must come out exact. Where it holds, the tests
    run the oneDNN path against MKL's, not only where it is chosen."""
    return _batched_exact()


@functools.cache
def _batched_decision():
    return products_use_onednn() and _batched_exact()


@functools.cache
def _batched_exact():
    import torch

    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    if (not _has_linear_pointwise() or not hasattr(matmul, "fp32_precision")
            or not _has_bf16_kernels() or _has_amx()):
        return False
    try:
        with _fp32_precision("bf16"):
            return _batched_sums_stay_float32()
    except (RuntimeError, ValueError):
        return False


def _batched_sums_stay_float32():
    """Products of `1 + 2**-12` (not a bfloat16 or TF32 number, which
    would round it to 1) by ones: exact in float32, 1,024 and 64 terms,
    `bmm`, a scaled `baddbmm` and `mm` of a transposed matrix (the kernel
    gradient's)."""
    import torch

    for depth in (1024, 64):
        a = torch.full((2, 16, depth), 1 + 2**-12)
        b = torch.ones((2, depth, 16))
        exact = depth * (1 + 2**-12)
        if not bool((torch.bmm(a, b) == exact).all()):
            return False
        scaled = torch.baddbmm(a.new_empty((2, 16, 16)), a, b, beta=0, alpha=0.5)
        if not bool((scaled == exact / 2).all()):
            return False
        if not bool((torch.mm(a[0].t().contiguous().t(), b[0]) == exact).all()):
            return False
    return True


def _has_amx(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU has AMX tiles (Linux's `amx_bf16` flag)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


@contextlib.contextmanager
def _fp32_precision(value):
    import torch

    matmul = torch.backends.mkldnn.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = value
    try:
        yield
    finally:
        matmul.fp32_precision = previous


def linear(rows, weight, bias, weight_is_kernel=True):
    """`rows @ kernel + bias` for 2-D `rows`, with autograd: `weight` is a
    Keras kernel `(in, out)` (`weight_is_kernel`) or a `(out, in)` matrix
    as `torch.nn.functional.linear` takes it (its gradient then comes out
    `(out, in)` and contiguous, likewise a kernel's `(in, out)`)."""
    import torch
    from torch.nn import functional

    if not _applies(rows, weight, bias):
        if weight_is_kernel:
            return torch.mm(rows, weight) if bias is None else torch.addmm(bias, rows, weight)
        return functional.linear(rows, weight, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (rows, weight, bias)):
        return _linear_function().apply(rows, weight, bias, weight_is_kernel)
    return _linear_pointwise(rows, weight.t() if weight_is_kernel else weight, bias)


@functools.cache
def _linear_function():
    import torch

    class OneDnnLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, rows, weight, bias, weight_is_kernel):
            ctx.save_for_backward(rows, weight)
            ctx.weight_is_kernel = weight_is_kernel
            return _linear_pointwise(rows, weight.t() if weight_is_kernel else weight, bias)

        @staticmethod
        def backward(ctx, g):  # g: (tokens, out)
            rows, weight = ctx.saved_tensors
            g = g.contiguous()  # used both ways round below
            kernel_layout = ctx.weight_is_kernel
            g_rows = g_weight = g_bias = None
            if ctx.needs_input_grad[0]:  # g @ kernel.T
                g_rows = _linear_pointwise(g, weight if kernel_layout else weight.t(), None)
            if ctx.needs_input_grad[1]:  # rows.T @ g as (in, out), or g.T @ rows as (out, in)
                g_weight = kernel_gradient(rows, g) if kernel_layout else kernel_gradient(g, rows)
            if ctx.needs_input_grad[2]:  # False without a bias
                g_bias = g.sum(0)
            return g_rows, g_weight, g_bias, None

    return OneDnnLinear
