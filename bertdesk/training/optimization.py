"""AdamW with BERT's weight-decay exclusions and a warmup/linear-decay schedule."""

import operator

import keras
import numpy as np
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

    def host_value(self, step):
        """`self(step)` as a Python float, from the same float32 arithmetic
        on the host: the fused PyTorch update reads its learning rate here
        rather than from the device (on a GPU each read is a wait)."""
        step = np.float32(step)
        peak = np.float32(self.peak)
        if step < self.warmup_steps:
            return float(peak * step / np.float32(max(1, self.warmup_steps)))
        remaining = np.maximum(np.float32(0.0), np.float32(self.total_steps) - step)
        return float(peak * remaining / np.float32(max(1, self.total_steps - self.warmup_steps)))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="bertdesk")
class BertAdamW(keras.optimizers.AdamW):
    """Keras' AdamW with BERT's weight-decay exclusions kept in its config
    (so a resumed run still skips LayerNorm and biases), and a fused update
    on the PyTorch backend.

    On PyTorch, Keras applies AdamW as a dozen `torch._foreach_*` passes
    over every parameter plus a per-gradient clipping loop; here clipping is
    one foreach call (the norms) and the whole update (decay, moments, step) is torch's
    fused AdamW kernel, with epsilon rescaled so the arithmetic is Keras'
    (epsilon added to sqrt(v) before bias correction), not torch's. Other
    backends compile the update into the training step and use Keras' code.
    The clipping factor is not applied to the gradients but handed to the
    kernel as its `grad_scale` (it divides each gradient as it reads it):
    one pass over every gradient less per step.

    Args:
        exclude_names: variables whose path contains any of these strings get
            no weight decay.
        fused: use the fused PyTorch update (default: on the PyTorch backend).
    """

    def __init__(self, *args, exclude_names=("bias", "gamma", "beta"), fused=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.exclude_names = tuple(exclude_names)
        if self.exclude_names:
            self.exclude_from_weight_decay(var_names=list(self.exclude_names))
        if fused is None:
            fused = keras.backend.backend() == "torch" and not self.amsgrad
        self.fused = bool(fused)
        self._clip_divisor = None  # set by _clip_gradients, used by the next update
        if self.fused and self.amsgrad:
            raise ValueError("BertAdamW(fused=True) does not do amsgrad")
        if self.fused and keras.backend.backend() != "torch":
            raise ValueError("BertAdamW(fused=True) needs the PyTorch backend")

    def _fused_now(self):
        """The fused update, except inside `torch.compile` (Keras' `jit_compile`
        on PyTorch), which cannot trace the fused kernel's in-place updates of
        the variables; there Keras' update is compiled instead."""
        if not self.fused:
            return False
        import torch

        return not torch.compiler.is_compiling()

    def _clip_gradients(self, grads):
        if (not (self.global_clipnorm and self._fused_now())
                or self.gradient_accumulation_steps):
            return super()._clip_gradients(grads)
        import torch

        norm = _global_norm(torch, [g for g in grads if g is not None])
        # Keras' formula: scale = clip * min(1 / norm, 1 / clip)
        scale = self.global_clipnorm * torch.clamp_max(1.0 / norm, 1.0 / self.global_clipnorm)
        # Not multiplied here (a pass over every gradient): the fused kernel
        # divides each gradient by its grad_scale argument as it reads it.
        self._clip_divisor = (1.0 / scale).to(torch.float32)
        return grads

    def _apply_weight_decay(self, variables):
        if not self._fused_now():
            super()._apply_weight_decay(variables)
        # the fused kernel decays (p *= 1 - lr * wd) before its update

    def _backend_apply_gradients(self, grads, trainable_variables):
        """Keras' sequence (clip, decay, update) without its evaluation of
        the learning-rate schedule on the device, which the fused update
        does not read (`_host_learning_rate`); Keras' own with gradient
        accumulation or a moving average."""
        if (not self._fused_now() or self.gradient_accumulation_steps or self.use_ema):
            return super()._backend_apply_gradients(grads, trainable_variables)
        grads = self._clip_gradients(grads)
        self._apply_weight_decay(trainable_variables)
        self._backend_update_step(grads, trainable_variables, None)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._fused_now():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import torch
        from torch.autograd.graph import increment_version

        with torch.no_grad():
            step = self._host_step()
            lr = self._host_learning_rate(step)
            # torch divides sqrt(v) by sqrt(1 - b2^t) before adding epsilon; scaling
            # epsilon by the same factor gives Keras' (sqrt(v) + eps) instead
            eps = self.epsilon / (1.0 - self.beta_2 ** step) ** 0.5
            groups = self._fused_groups(trainable_variables)
            divisor, self._clip_divisor = self._clip_divisor, None
            for decays, params, ms, vs, positions, step_t in groups:
                step_t.fill_(step)  # a kernel argument, not a copy from the host
                gs = [grads[i] for i in positions]
                gs = [g if g.dtype == p.dtype else g.to(p.dtype) for g, p in zip(gs, params)]
                torch._fused_adamw_(params, gs, ms, vs, [], [step_t] * len(params), lr=lr,
                                    beta1=self.beta_1, beta2=self.beta_2,
                                    weight_decay=(self.weight_decay or 0.0) if decays else 0.0,
                                    eps=eps, amsgrad=False, maximize=False,
                                    grad_scale=divisor)
                # the fused op leaves the tensors' version counters as they
                # were; every other in-place write bumps them (autograd's
                # check on saved tensors, and the kept casts of
                # `fused_kernels.weight`, read them)
                increment_version([*params, *ms, *vs])

    def _host_step(self):
        """This update's step (`iterations + 1`) as a Python float, read from
        the device only when it may have changed other than by Keras' own
        increment after the last update: on a GPU each read waits for the
        whole backward pass, with the GPU idle while the update is launched.
        Keras' `assign_add(1)` bumps the counter tensor's version by one;
        any other write (a restore, `assign`) bumps it again."""
        value = self.iterations.value
        known = getattr(self, "_step_mirror", None)
        if known is not None and known[0] is value and value._version == known[1] + 1:
            step = known[2] + 1
        else:
            step = int(keras.ops.convert_to_numpy(value)) + 1
        object.__setattr__(self, "_step_mirror", (value, value._version, step))
        return float(step)

    def _host_learning_rate(self, step):
        """The learning rate of update `step`: `WarmupLinearDecay` evaluated
        on the host; any other schedule or rate read from the device."""
        if isinstance(self._learning_rate, WarmupLinearDecay):
            return self._learning_rate.host_value(step - 1)  # schedule(iterations)
        return float(keras.ops.convert_to_numpy(self._get_current_learning_rate()))

    def build(self, var_list):
        # set past Keras' attribute tracking, which would count the kept
        # variables as the optimizer's own (and save them with its state)
        object.__setattr__(self, "_fused_plan", None)
        object.__setattr__(self, "_step_mirror", None)
        super().build(var_list)

    def _fused_groups(self, trainable_variables):
        """The fused kernel's argument lists for `trainable_variables`: one
        group per (decayed or not, dtype, device), each `(decays, params,
        momentums, velocities, positions in trainable_variables, step)`:
        tensors, and a 0-d float32 tensor on the group's device that each
        update fills with its step. Made at the first step and kept while
        the same variables come in the same order (Keras' own step passes the same list each
        time; the variables' tensors are updated in place, never replaced):
        reading 57 variables' and their moments' `.value` through Keras'
        property took about 0.4 ms of Python a step."""
        plan = getattr(self, "_fused_plan", None)
        if (plan is not None and len(plan[0]) == len(trainable_variables)
                and all(map(operator.is_, plan[0], trainable_variables))):
            return plan[1]
        import torch

        groups = {}
        for position, var in enumerate(trainable_variables):
            i = self._get_variable_index(var)
            value = var.value
            key = (bool(self._use_weight_decay(var)), value.dtype, value.device)
            g = groups.setdefault(key, (key[0], [], [], [], [], torch.zeros(
                (), dtype=torch.float32, device=value.device)))
            g[1].append(value)
            g[2].append(self._momentums[i].value)
            g[3].append(self._velocities[i].value)
            g[4].append(position)
        # the variables themselves are kept, so their ids stay theirs; not
        # through Keras' tracking (see `build`)
        plan = (list(trainable_variables), list(groups.values()))
        object.__setattr__(self, "_fused_plan", plan)
        return plan[1]

    def get_config(self):
        return {**super().get_config(), "exclude_names": list(self.exclude_names),
                "fused": None}


# Gradients at least this large (float32, on the CPU) get their squared norm
# from BLAS's dot product: about half `_foreach_norm`'s time there (a
# (30522, 256) vocabulary gradient: 1.0 ms against 2.3) and closer to the
# exact norm (relative error 4e-6 against 2e-4). The whole clipping norm of
# a model's gradients, with this threshold against 2^20: MiniLM (L6/H384)
# 2.1 against 3.3-4.6 ms, BERT-mini 1.05 against 1.23, base 18.0 against
# 19.5; smaller thresholds (2^14, 2^16) gain nothing more.
_DOT_NORM_ELEMENTS = 1 << 17


def _global_norm(torch, grads):
    """The Euclidean norm of all `grads` together, as a 0-d tensor."""
    squares, rest = [], []
    for g in grads:
        if (g.device.type == "cpu" and g.dtype == torch.float32
                and g.numel() >= _DOT_NORM_ELEMENTS):
            squares.append(torch.dot(g.reshape(-1), g.reshape(-1)))
        else:
            rest.append(g)
    if rest:
        squares.append(torch.stack(torch._foreach_norm(rest)).float().square().sum())
    return torch.stack(squares).sum().sqrt()


def bert_adamw(learning_rate, total_steps, warmup_ratio=0.1, weight_decay=0.01,
               max_grad_norm=1.0, epsilon=1e-8, fused=None):
    """AdamW as BERT fine-tuning uses it: no decay on LayerNorm and biases,
    warmup then linear decay, global-norm gradient clipping."""
    schedule = WarmupLinearDecay(learning_rate, int(round(warmup_ratio * total_steps)),
                                 total_steps)
    return BertAdamW(learning_rate=schedule, weight_decay=weight_decay, beta_1=0.9,
                     beta_2=0.999, epsilon=epsilon, global_clipnorm=max_grad_norm,
                     fused=fused)


@keras.saving.register_keras_serializable(package="bertdesk")
class BertLamb(keras.optimizers.Optimizer):
    """LAMB (You et al., 2019) as BERT pretraining uses it: the Adam update
    plus weight decay, scaled per tensor by the trust ratio
    ||w|| / ||update||; LayerNorm parameters and biases get neither decay
    nor the trust ratio (ratio 1).

    Keras' own `Lamb` leaves weight decay outside the trust ratio and adapts
    every tensor; this follows the paper and NVIDIA's BERT recipe instead.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                 weight_decay=0.01, exclude_names=("bias", "gamma", "beta"),
                 name="bert_lamb", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.lamb_weight_decay = float(weight_decay or 0.0)
        self.exclude_names = tuple(exclude_names)
        if self.exclude_names:
            self.exclude_from_weight_decay(var_names=list(self.exclude_names))

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"])

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        m_hat = ops.divide(m, 1.0 - ops.power(ops.cast(self.beta_1, variable.dtype), step))
        v_hat = ops.divide(v, 1.0 - ops.power(ops.cast(self.beta_2, variable.dtype), step))
        update = ops.divide(m_hat, ops.add(ops.sqrt(v_hat), self.epsilon))
        if self._use_weight_decay(variable):
            update = ops.add(update, ops.multiply(self.lamb_weight_decay, variable))
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            u_norm = ops.sqrt(ops.sum(ops.square(update)))
            ratio = ops.where(ops.logical_and(ops.greater(w_norm, 0), ops.greater(u_norm, 0)),
                              w_norm / ops.maximum(u_norm, 1e-30), 1.0)
            update = ops.multiply(ratio, update)
        self.assign_sub(variable, ops.multiply(lr, update))

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                       "weight_decay": self.lamb_weight_decay,
                       "exclude_names": list(self.exclude_names)})
        return config
