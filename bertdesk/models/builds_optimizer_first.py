"""The optimizer's variables, and the compiled losses' and metrics', made
before TensorFlow traces the training step."""

import keras


class BuildsOptimizerFirst:
    """Mixin for `keras.Model` subclasses: on the TensorFlow backend, the
    optimizer's variables (moments, accumulated gradients, a loss scale's
    state) are made eagerly when the training function is made, not inside
    its first trace.

    Keras' TensorFlow trainer, without a distribution strategy, leaves the
    optimizer unbuilt until `apply_gradients` runs inside the traced step
    (for compatibility, its comment says). `tf.function` then traces the
    step twice, once to lift the new variables out of the graph and once
    more without them, and each variable made inside a trace costs about
    15 ms against 1 eagerly. Keras builds the same variables from the same
    list there (`self.trainable_weights`, what its step differentiates).
    Under a distribution strategy it builds them itself, in the strategy's
    scope, before tracing, and JAX and PyTorch build them eagerly too: there
    this changes nothing.

    Measured on 2 AMD EPYC Zen 3 cores, the first `train_on_batch` of a
    BERT-mini classifier (16 x 128, bertdesk's AdamW): 10.3-12.7 -> 5.3-5.8
    s, with XLA 19.1 -> 12.7 s; later steps unchanged. (The fine-tuning job
    had built its optimizer itself since MiniLM's first step took 17 s
    there, and 9 built first; pretraining, and any `fit` of these models,
    now gets the same.)

    The compiled losses and metrics are built before the trace too, where
    Keras would make variables for them in it (`_maybe_symbolic_build`): a
    model with several losses (`CompileLoss` makes a tracker per output)
    or with metrics named by a string or a function traced twice for them.
    The pretraining model's first step on TensorFlow (2 cores, Zen 3, 8 x
    32 tokens): BERT-tiny 15.2-18.4 -> 12.3-14.3 s with XLA, 7.7-9.1 ->
    6.0-6.1 s without; mini 20.9-21.8 -> 15.9-16.6 s; base 49.6 -> 39.5 s.

    Mix it in before `keras.Model`:
    `class MyModel(BuildsOptimizerFirst, keras.Model): ...`
    """

    def make_train_function(self, force=False):
        optimizer = getattr(self, "optimizer", None)
        if (keras.backend.backend() == "tensorflow" and optimizer is not None
                and not optimizer.built and self._distribute_strategy is None
                and self.trainable_weights):
            # as `optimizer.apply` would at the first step
            with keras.name_scope(optimizer.name, caller=optimizer):
                optimizer.build(self.trainable_weights)
            optimizer.built = True
        return super().make_train_function(force)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' TensorFlow `fit`, `evaluate` and `train_on_batch` build the
        model's compiled losses and metrics symbolically here only under a
        distribution strategy; without one they build inside the first
        trace. Where that build makes variables (the trackers of several
        losses, metrics named by a string or a function), `tf.function`
        traces the step twice: they are built here, as under a strategy."""
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if (keras.backend.backend() != "tensorflow" or self._distribute_strategy is not None
                or not _builds_variables_in_the_trace(self)):
            return
        if data_batch is None:  # TensorFlow's epoch iterator, reset after this
            for _, _, batches in iterator:
                data_batch = next(batches)
                break
        _build_compiled_losses_and_metrics(self, data_batch)


def _build_compiled_losses_and_metrics(model, data_batch):
    """What Keras' `Trainer._symbolic_build` does for them, without building
    the optimizer too (an `evaluate` needs none): the same calls on
    symbolic tensors shaped like `data_batch`."""
    from keras.src.backend import compute_output_spec

    def symbolic(value):
        if value is None:
            return None
        return keras.KerasTensor(value.shape, keras.backend.standardize_dtype(value.dtype))

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
        keras.tree.map_structure(symbolic, data_batch))
    y_pred = compute_output_spec(model, x, training=False)
    if model._compile_metrics is not None and not model._compile_metrics.built:
        compute_output_spec(model.compute_metrics, x, y, y_pred, sample_weight=sample_weight)
    if model._compile_loss is not None and not model._compile_loss.built:
        compute_output_spec(model._compute_loss, x, y, y_pred, sample_weight=sample_weight,
                            training=False)


def _builds_variables_in_the_trace(model):
    """Whether Keras' `CompileLoss` or `CompileMetrics`, unbuilt, would make
    variables when built: a `Mean` tracker per loss where there are several,
    a metric object per metric given by name or as a function (objects
    made by the user hold theirs already)."""
    compile_loss = getattr(model, "_compile_loss", None)
    if compile_loss is not None and not compile_loss.built:
        losses = keras.tree.flatten(getattr(compile_loss, "_user_loss", None))
        if sum(loss is not None for loss in losses) > 1:
            return True
    compile_metrics = getattr(model, "_compile_metrics", None)
    if compile_metrics is not None and not compile_metrics.built:
        metrics = keras.tree.flatten([getattr(compile_metrics, "_user_metrics", None),
                                      getattr(compile_metrics, "_user_weighted_metrics", None)])
        return any(m is not None and not isinstance(m, keras.metrics.Metric) for m in metrics)
    return False
