"""One harness for every kind of bertdesk class (after keras-hub's
`TestCase.run_layer_test`): config and `.keras` round trips, variable
sequence length, padding invariance, mixed precision and a `fit` step."""

import keras
import numpy as np
from keras import ops


def to_np(x):
    return np.asarray(ops.convert_to_numpy(x)).astype(np.float32)


def flat_outputs(out):
    if isinstance(out, dict):
        return {k: to_np(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return {str(i): to_np(v) for i, v in enumerate(out)}
    return {"out": to_np(out)}


def assert_outputs_close(a, b, atol=1e-5, rtol=1e-5, where=None):
    a, b = flat_outputs(a), flat_outputs(b)
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        assert x.shape == y.shape, (k, x.shape, y.shape)
        if where is not None and k in where:
            x, y = x[where[k]], y[where[k]]
        np.testing.assert_allclose(x, y, atol=atol, rtol=rtol, err_msg=k)


def check_config_roundtrip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def check_keras_roundtrip(model, inputs, tmp_path):
    """Save as `.keras`, load with safe_mode, get the same outputs."""
    expected = model(inputs)
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    assert_outputs_close(expected, loaded(inputs), atol=1e-6)
    return loaded


def check_variable_length(model, make_inputs, lengths=(5, 11)):
    """The same model runs on several sequence lengths without rebuilding."""
    for seq in lengths:
        out = flat_outputs(model(make_inputs(seq)))
        assert all(np.isfinite(v).all() for v in out.values())


def check_padding_invariance(model, inputs, mask_key, float_key=None, seq_outputs=None):
    """Changing what sits at padded positions leaves every output at real
    positions unchanged."""
    mask = np.asarray(inputs["padding_mask"]).astype(bool)
    changed = dict(inputs)
    rng = np.random.default_rng(7)
    key = float_key or mask_key
    value = np.array(inputs[key])
    if value.dtype.kind == "f":
        noise = rng.normal(size=value.shape).astype(value.dtype) * 5
        value = np.where(mask[..., None], value, noise)
    else:
        noise = rng.integers(1, 100, size=value.shape).astype(value.dtype)
        value = np.where(mask, value, noise)
    changed[key] = value
    a, b = flat_outputs(model(inputs)), flat_outputs(model(changed))
    assert not np.array_equal(np.asarray(inputs[key]), value), "test changed nothing"
    for k in a:
        if seq_outputs is not None and k not in seq_outputs:
            np.testing.assert_allclose(a[k], b[k], atol=2e-5, err_msg=k)
        elif a[k].ndim >= 2 and a[k].shape[:2] == mask.shape:
            np.testing.assert_allclose(a[k][mask], b[k][mask], atol=2e-5, err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], atol=2e-5, err_msg=k)


def check_mixed_precision(build_model, inputs, atol=0.1):
    """Under `mixed_bfloat16` variables stay float32, activations are
    bfloat16 and the numbers stay close to float32's."""
    keras.config.set_dtype_policy("float32")
    model32 = build_model()
    ref = flat_outputs(model32(inputs))
    weights = model32.get_weights()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model16 = build_model()
        model16(inputs)
        assert all(v.dtype == "float32" for v in model16.weights)
        model16.set_weights(weights)
        out = flat_outputs(model16(inputs))
    finally:
        keras.config.set_dtype_policy("float32")
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], atol=atol, rtol=0.05, err_msg=k)
    return model16


def assert_same_updates(before, expected, actual, rtol, names=None):
    """Two training steps from the same weights `before` moved every weight
    alike: each variable's update in `actual` is within `rtol` of the
    largest element of its update in `expected`. Comparing the updates, not
    the weights, keeps a loose (bfloat16) tolerance from passing a step
    that lost a whole gradient: one SGD step moves a weight by less than
    bfloat16's tolerance on the weight itself."""
    assert len(before) == len(expected) == len(actual)
    moved = 0
    for i, (w, e, a) in enumerate(zip(before, expected, actual)):
        want, got = np.asarray(e) - np.asarray(w), np.asarray(a) - np.asarray(w)
        scale = float(np.abs(want).max()) if want.size else 0.0
        moved += scale > 0
        name = names[i] if names else f"weight {i}"
        np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale + 1e-7,
                                   err_msg=f"{name}'s update")
    return moved


def check_fit_step(model, inputs, targets, loss):
    """One `fit` step runs, gives a finite loss and changes the weights."""
    before = [np.array(w) for w in model.get_weights()]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    history = model.fit(inputs, targets, batch_size=len(next(iter(targets.values()))
                                                           if isinstance(targets, dict) else targets),
                        epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def seed_generators(model):
    return [g for layer in model._flatten_layers() for g in getattr(layer, "_seed_generators", [])]


def rng_snapshot(model):
    """The dropout generators' state (on PyTorch: torch's global generator,
    which unseeded `BertDropout` draws from)."""
    if keras.backend.backend() == "torch":  # BertDropout unseeded: torch's generator
        import torch

        return torch.get_rng_state()
    # convert_to_numpy, not to_np: uint32 seeds do not survive float32
    return [np.array(keras.ops.convert_to_numpy(g.state)) for g in seed_generators(model)]


def rng_restore(model, state):
    if keras.backend.backend() == "torch":
        import torch

        torch.set_rng_state(state)
        return
    for g, s in zip(seed_generators(model), state, strict=True):
        g.state.assign(s)
