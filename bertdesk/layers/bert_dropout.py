"""Dropout whose mask costs 16 random bits per element instead of 32."""

import keras
from keras import ops

from bertdesk.layers import fused_kernels
from bertdesk.layers.random_bits import draw_seed, random_int16

_LEVELS = 1 << 16  # a 16-bit half of a random word takes this many values


# === Layer ===
@keras.saving.register_keras_serializable(package="bertdesk")
class BertDropout(keras.layers.Layer):
    """Inverted dropout, like `keras.layers.Dropout`, with cheaper masks.

    Each random 32-bit word gives the keep/drop decision for two elements:
    its two 16-bit halves are read as signed integers, an element is dropped
    when its half is among the lowest `round(rate * 65536)` values, and kept
    values are scaled by the exact inverse of the keep probability, so the
    expected output equals the input. The drop probability is `rate` to
    within 2**-17. Drawing half as many words is what makes it cheaper: on a
    CPU the generator dominates the cost of a mask (the attention-probability
    masks at long sequences above all).

    Args:
        rate: fraction of the inputs to drop, in [0, 1].
        seed: int seed of the layer's generator; None draws one from Keras'
            global seed (`keras.utils.set_random_seed`), and on PyTorch uses
            torch's global generator, as `keras.layers.Dropout` does.

    Call args:
        inputs: a tensor of any rank.
        training: drop only when True.
        drawn_seed: optional, a seed from `draw_seed()`: the mask of that draw,
            leaving the generator as it is (a recomputed forward pass
            repeats its masks this way).
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate <= 1:
            raise ValueError(f"BertDropout: rate must be in [0, 1], got {rate}")
        self.rate = rate
        self.seed = seed
        self.supports_masking = True
        if rate > 0:
            self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, inputs, training=False, drawn_seed=None):
        if not training or self.rate == 0:
            return inputs
        if self.rate == 1:
            return ops.zeros_like(inputs)
        keep, scale = self.keep_mask(inputs, drawn_seed=drawn_seed)
        if keras.backend.backend() == "torch":  # no scalars made into tensors
            return fused_kernels.dropout(inputs, keep, scale)
        return ops.where(keep, inputs * ops.cast(scale, inputs.dtype), 0.0)

    def add_to(self, residual, inputs, training=False, drawn_seed=None):
        """`residual + self(inputs, training=training)`, the same numbers, in
        one kernel on PyTorch (eager PyTorch runs the formula as three).
        Outside training, the plain sum, without a layer call's overhead."""
        if not training or self.rate == 0:
            return residual + inputs
        if self.rate == 1 or keras.backend.backend() != "torch":
            return residual + self(inputs, training=training, drawn_seed=drawn_seed)
        keep, scale = self.keep_mask(inputs, drawn_seed=drawn_seed)
        return fused_kernels.dropout_add(residual, inputs, keep, scale)

    def draw_seed(self):
        """The seed of the next mask, advancing the generator as drawing the
        mask would; pass it as `drawn_seed=` to make that mask. Needs rate > 0."""
        return draw_seed(self.seed_generator)

    def keep_mask(self, inputs, drawn_seed=None):
        """The boolean mask of kept elements that `call(inputs, training=True)`
        would draw (advancing the generator the same way), and the factor
        it scales kept values by: for callers that apply the factor to a
        smaller tensor downstream (attention scales its output rather than
        the `(batch, heads, seq, seq)` probabilities). Needs 0 < rate < 1."""
        return self.keep_mask_of_shape(ops.shape(inputs), like=inputs, drawn_seed=drawn_seed)

    def keep_mask_of_shape(self, shape, like=None, drawn_seed=None):
        """`keep_mask` for inputs of `shape` that need not exist yet (`like`:
        a tensor on the device the mask should be on)."""
        if not 0 < self.rate < 1:
            raise ValueError(f"BertDropout.keep_mask needs 0 < rate < 1, got {self.rate}")
        threshold = round(self.rate * _LEVELS)
        seed = self.seed_generator if drawn_seed is None else drawn_seed
        halves = random_int16(shape, seed, like=like)
        if keras.backend.backend() == "torch":  # the same comparison, vectorized
            keep = fused_kernels.keep_mask(halves, threshold - _LEVELS // 2)
        else:
            keep = ops.greater_equal(halves, threshold - _LEVELS // 2)
        return keep, _LEVELS / (_LEVELS - threshold)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
