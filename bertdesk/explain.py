"""Why a fine-tuned classifier predicts what it does: per-token attributions
(gradient x input, integrated gradients) and every layer's attention maps.

    result = bertdesk.explain.explain(model, tokenizer, "a text")
    result["tokens"], result["attributions"], result["attentions"]  # (layers, heads, seq, seq)

The forward pass starts from the token embeddings (the input the
attributions are about) and reuses the model's own layers. Taking a
gradient is the one thing Keras 3 has no backend-neutral op for, so
`_gradient` below holds the three backends' versions of it.
"""

import numpy as np
from keras import ops

METHODS = ("integrated_gradients", "gradient_x_input")


def _forward(model, token_embeddings, segment_ids, padding_mask, attentions=False):
    """Logits `(batch, classes)` from token embeddings `(batch, seq, hidden)`
    through the model's layers (inference: no dropout); with `attentions`
    also the attention maps `(batch, layers, heads, seq, seq)`."""
    backbone = model.backbone
    e = backbone.embeddings
    token_embeddings = ops.convert_to_tensor(token_embeddings)
    seq = ops.shape(token_embeddings)[1]
    # the lookups in the token embeddings' float32 (mixed precision computes
    # them in bfloat16, which TensorFlow does not add to float32 on its own)
    positions = ops.cast(e.position_embedding(ops.arange(seq, dtype="int32")),
                         token_embeddings.dtype)  # (seq, hidden)
    segments = ops.cast(e.segment_embedding(segment_ids), token_embeddings.dtype)
    x = token_embeddings + ops.expand_dims(positions, 0) + segments
    x = e.layer_norm(x)
    maps = []
    for layer in backbone.encoder_layers:
        if attentions:
            x, probs = layer(x, padding_mask=padding_mask, return_attention_scores=True)
            maps.append(probs)
        else:
            x = layer(x, padding_mask=padding_mask)
    logits = ops.cast(model.classifier(backbone.pooler(x)), "float32")
    return (logits, ops.stack(maps, axis=1)) if attentions else logits


def _gradient(fn, x):
    """d sum(fn(x)) / dx for a numpy array `x`, on the current backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: fn(v).sum())(x))
    if backend == "tensorflow":
        import tensorflow as tf

        v = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(v)
            total = tf.reduce_sum(fn(v))
        return tape.gradient(total, v).numpy()
    if backend == "torch":
        import torch

        v = torch.tensor(x, requires_grad=True)
        fn(v).sum().backward()
        return v.grad.detach().cpu().numpy()
    raise NotImplementedError(f"gradients on the {backend} backend")


def explain(model, tokenizer, text, text_pair=None, target=None,
            method="integrated_gradients", steps=32, max_length=128, tolerance=0.05,
            max_steps=256):
    """Attributions of each token to the `target` class logit (default: the
    predicted class), and the attention maps, for one text (or pair).

    Integrated gradients (Sundararajan et al. 2017) integrate the gradient
    along the straight path from an all-zero embedding to the input
    (midpoint rule, `steps` points), so the attributions add up to
    logit(input) - logit(baseline); gradient x input is one gradient.
    When the sum misses that change by more than `tolerance` (relative),
    the points are doubled, up to `max_steps`, as a sharply curved path
    needs more of them; `steps` in the result says how many were used.

    Returns a dict: `tokens` (word pieces), `offsets` (character spans in
    the text or pair; (0, 0) for specials), `segments`, `attributions`
    (seq,), `target`, `logits` (classes,), `baseline_logit`, `steps` (the
    integration points used; 1 for gradient x input), and `attentions`
    (layers, heads, seq, seq).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    from bertdesk.predictor import whole_number

    steps, max_steps = whole_number(steps, "steps"), whole_number(max_steps, "max_steps")
    if max_steps < steps:
        raise ValueError(f"max_steps ({max_steps}) must be at least steps ({steps})")
    if target is not None and (isinstance(target, bool)
                               or not isinstance(target, (int, np.integer))):
        raise ValueError(f"target must be a class index (a whole number), got {target!r}")
    from bertdesk.tasks.bert_text_classifier import BertTextClassifier

    if not isinstance(model, BertTextClassifier):  # (a tagger's and a span model's heads
        # read every token, not the pooled [CLS]: their outputs are not one logit each)
        raise TypeError(f"explain() needs a text classifier (BertTextClassifier), got "
                        f"{type(model).__name__}")
    quantized = next((layer.path for layer in model._flatten_layers()
                      if getattr(layer, "quantization_mode", None)), None)
    if quantized:
        raise ValueError(f"explain() needs the float model: {model.name} is quantized "
                         f"({quantized}, ...), and the gradients Keras gives an int8 layer "
                         "are its float kernel's, not those of the quantized pass (integrated "
                         "gradients then miss the logit change by 15-22%)")
    enc = tokenizer([text], None if text_pair is None else [text_pair], max_length=max_length,
                    padding="longest", return_offsets=True)
    ids, seg, mask = enc["token_ids"], enc["segment_ids"], enc["padding_mask"]
    embedded = np.asarray(ops.convert_to_numpy(
        model.backbone.embeddings.token_embedding(ids)), np.float32)  # (1, seq, hidden)
    logits, maps = _forward(model, embedded, seg, mask, attentions=True)
    logits = np.asarray(ops.convert_to_numpy(logits))[0]
    target = int(np.argmax(logits)) if target is None else int(target)
    if not 0 <= target < logits.shape[0]:
        raise ValueError(f"target {target} is not a class index (0..{logits.shape[0] - 1})")

    def score(n):
        seg_n, mask_n = np.repeat(seg, n, 0), np.repeat(mask, n, 0)
        return lambda v: _forward(model, v, seg_n, mask_n)[:, target]

    baseline = np.zeros_like(embedded)
    baseline_logit = float(np.asarray(ops.convert_to_numpy(score(1)(baseline)))[0])
    change = float(logits[target]) - baseline_logit
    if method == "gradient_x_input":
        steps = 1
        attributions = (embedded * _gradient(score(1), embedded)).sum(-1)[0]
    else:
        while True:
            alphas = ((np.arange(steps) + 0.5) / steps).astype(np.float32)[:, None, None]
            path = baseline + alphas * (embedded - baseline)  # (steps, seq, hidden)
            grads = _gradient(score(steps), path).mean(0, keepdims=True)
            attributions = ((embedded - baseline) * grads).sum(-1)[0]
            gap = abs(float(attributions.sum()) - change)
            if gap <= tolerance * abs(change) or steps * 2 > max_steps:
                break
            steps *= 2
    return {"tokens": tokenizer.id_to_token(ids[0]), "offsets": enc["offsets"][0],
            "segments": seg[0], "attributions": attributions, "target": target,
            "logits": logits, "baseline_logit": baseline_logit, "steps": steps,
            "attentions": np.asarray(ops.convert_to_numpy(maps))[0]}
