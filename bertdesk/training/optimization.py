"""AdamW with BERT's weight-decay exclusions and a warmup/linear-decay schedule."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bertdesk")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then linear decay
    to 0 at `total_steps` (transformers' `get_linear_schedule_with_warmup`)."""

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.peak * step / max(1, self.warmup_steps)
        decay = self.peak * ops.maximum(0.0, self.total_steps - step) / max(
            1, self.total_steps - self.warmup_steps)
        return ops.where(step < self.warmup_steps, warm, decay)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


def bert_adamw(learning_rate, total_steps, warmup_ratio=0.1, weight_decay=0.01,
               max_grad_norm=1.0, epsilon=1e-8):
    """AdamW as BERT fine-tuning uses it: no decay on LayerNorm and biases,
    warmup then linear decay, global-norm gradient clipping."""
    schedule = WarmupLinearDecay(learning_rate, int(round(warmup_ratio * total_steps)),
                                 total_steps)
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=weight_decay, beta_1=0.9, beta_2=0.999,
        epsilon=epsilon, global_clipnorm=max_grad_norm)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer
