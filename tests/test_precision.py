"""The mixed-precision check: bfloat16 products timed against float32 on
the current backend, and the warning that fine-tuning and pretraining pass
on when mixed precision would slow them down."""

import math

import keras
import pytest

from bertdesk.data.tables import DataError
from bertdesk.training import precision
from bertdesk.training.finetune import FinetuneConfig, run_finetune


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_gflops_times_a_product_in_each_precision(dtype, monkeypatch):
    products = []
    matmul = keras.ops.matmul
    monkeypatch.setattr(keras.ops, "matmul",
                        lambda a, b: products.append(keras.backend.standardize_dtype(a.dtype))
                        or matmul(a, b))
    speed = precision.matmul_gflops(dtype, size=64, repeats=2)
    assert math.isfinite(speed) and speed > 0
    assert products == [dtype] * 3  # one untimed call, then the repeats


@pytest.mark.parametrize("bf16,warns", [(1.4, True), (89.0, True), (90.0, False),
                                        (180.0, False)])
def test_warning_only_when_bfloat16_is_slower(bf16, warns, monkeypatch):
    speeds = {"float32": 100.0, "bfloat16": bf16}
    monkeypatch.setattr(precision, "matmul_gflops", lambda dtype: speeds[dtype])
    warning = precision.slow_bfloat16_warning()
    if not warns:
        assert warning is None
        return
    assert f"{bf16:.1f} GFLOP/s against 100.0 for float32 ({bf16 / 100:.2f}x)" in warning
    assert keras.backend.backend() in warning and "without --mixed-precision" in warning
    assert warning.startswith("mixed precision will slow training down here")
    assert precision.slow_bfloat16_warning(job="prediction").startswith(
        "mixed precision will slow prediction down here")


@pytest.mark.parametrize("mixed", [True, False])
def test_finetuning_passes_the_warning_on_before_reading_data(tmp_path, mixed, monkeypatch):
    calls = []
    monkeypatch.setattr(precision, "slow_bfloat16_warning",
                        lambda job: calls.append(job) or "bfloat16 is slow here")
    events = []
    config = FinetuneConfig(train=str(tmp_path / "missing.csv"), output=str(tmp_path / "run"),
                            mixed_precision=mixed)
    with pytest.raises(DataError, match="missing.csv"):
        run_finetune(config, events.append)
    warnings = [e["text"] for e in events if e["event"] == "message" and "warning" in e["text"]]
    assert warnings == (["warning: bfloat16 is slow here"] if mixed else [])
    assert calls == (["training"] if mixed else [])  # float32 runs pay no probe


@pytest.mark.parametrize("mixed,policy", [(True, "mixed_bfloat16"), (False, "float32")])
def test_set_precision_sets_the_policy_and_reports_once(mixed, policy, monkeypatch):
    monkeypatch.setattr(precision, "slow_bfloat16_warning",
                        lambda job: f"bfloat16 is slow for {job}")
    reported = []
    precision.set_precision(mixed, reported.append)
    assert keras.config.dtype_policy().name == policy
    assert reported == (["warning: bfloat16 is slow for training"] if mixed else [])
    precision.set_precision(mixed, reported.append, job="prediction")
    assert reported[1:] == (["warning: bfloat16 is slow for prediction"] if mixed else [])
