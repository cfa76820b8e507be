"""Functional models whose graph runs as plain calls on eager PyTorch."""

import keras


class RunsGraphDirectly:
    """Mixin for bertdesk's functional models: on PyTorch, `call` runs the
    function the model's graph was built with (`self._wire(inputs,
    training)`) on the real tensors, instead of walking the graph.

    A functional model's call walks its graph node by node and calls each
    layer through `Layer.__call__`; under XLA (JAX, TensorFlow) that Python
    runs once, when the step is traced, but eager PyTorch pays it at every
    call: a BERT-mini backbone's forward pass at batch 1 x 8 took 3.8 ms, of
    which the graph walk and the layer calls were 1.7. `_wire` is the same
    function `__init__` gives symbolic inputs to build the graph, its layers
    called through `eager_calls.call_layer`, so the two paths cannot drift
    apart; the model's inputs go through Keras' own checks and conversions
    first (`Functional._standardize_inputs`). Everywhere else (JAX,
    TensorFlow, inputs carrying Keras masks) the call is Keras' own.

    Mix it in before `keras.Model`; the class defines
    `_wire(self, inputs, training=None)` over its own layers.
    """

    def call(self, inputs, training=None, mask=None):
        # (`Layer.__call__` passes a structure of the inputs' Keras masks:
        # all None unless the caller attached some.)
        if keras.backend.backend() != "torch" or any(
                m is not None for m in keras.tree.flatten(mask)):
            return super().call(inputs, training=training, mask=mask)
        flat = self._standardize_inputs(inputs)
        if len(flat) != len(self._inputs):  # let Keras explain the mismatch
            return super().call(inputs, training=training, mask=mask)
        outputs = self._wire(keras.tree.pack_sequence_as(self._inputs_struct, flat), training)
        return dict(sorted(outputs.items()))  # keyed in the order Keras' call returns
