"""AdamW with BERT's weight-decay exclusions and a warmup/linear-decay schedule."""

import math
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


class _SchedulesByUpdate:
    """Mixin for Keras optimizers: a learning-rate schedule evaluated at
    `iterations`, the count of updates. Keras' own evaluates it at
    `_iterations`, its count of batches, which with gradient accumulation
    over k batches is k times the count of updates: a schedule of N updates
    (warmup, then decay to 0 at N) reached 0 after N / k of them."""

    def _get_current_learning_rate(self):
        if isinstance(self._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()


class _ClipsSummedGradients:
    """Mixin for Keras optimizers: gradient clipping by norm from the
    gradients as they update the variables. On TensorFlow an embedding
    lookup's gradient is `IndexedSlices`, a row for every token of the
    batch (the segment table's 56 rows of a NER batch all for row 0), and
    Keras' norm squares each row before the rows of one token are summed:
    the global norm came out 1.2627 for 1.1673 on a tiny NER batch, so the
    update was clipped by the wrong factor (0.792, not 0.857). The slices
    are summed into the dense gradient first (what the update reads
    anyway); with gradient accumulation they already are."""

    def _clip_gradients(self, grads):
        if keras.backend.backend() == "tensorflow" and (self.clipnorm or self.global_clipnorm):
            import tensorflow as tf

            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                     for g in grads]
        return super()._clip_gradients(grads)


@keras.saving.register_keras_serializable(package="bertdesk")
class BertAdamW(_ClipsSummedGradients, _SchedulesByUpdate, keras.optimizers.AdamW):
    """Keras' AdamW with BERT's weight-decay exclusions kept in its config
    (so a resumed run still skips LayerNorm and biases), and a fused update
    on the PyTorch and TensorFlow backends.

    On PyTorch, Keras applies AdamW as a dozen `torch._foreach_*` passes
    over every parameter plus a per-gradient clipping loop; here clipping is
    one foreach call (the norms) and the whole update (decay, moments, step) is torch's
    fused AdamW kernel, with epsilon rescaled so the arithmetic is Keras'
    (epsilon added to sqrt(v) before bias correction), not torch's.
    The clipping factor is not applied to the gradients but handed to the
    kernel as its `grad_scale` (it divides each gradient as it reads it):
    one pass over every gradient less per step.

    On TensorFlow, Keras writes each variable's update as about twenty graph
    ops (casts, powers, the moments' and the variable's arithmetic and
    assignments) and its weight decay as a few more, evaluating the
    learning-rate schedule again for every decayed variable; here each
    variable's update is TensorFlow's own Adam kernel (`ResourceApplyAdam`,
    Keras' arithmetic: epsilon added to sqrt(v), the bias correction in the
    step size), and its decay one `ResourceApplyGradientDescent` by the rate
    computed once. Fewer ops to trace (the first step) and to run without
    XLA; under XLA both kernels compile into the step. Keras' code where it
    has no such kernel: amsgrad, other than float32 variables. JAX compiles
    Keras' update into the step and uses Keras' code.

    Args:
        exclude_names: variables whose path contains any of these strings get
            no weight decay.
        fused: use the fused update (default: on the PyTorch and TensorFlow
            backends).
    """

    def __init__(self, *args, exclude_names=("bias", "gamma", "beta"), fused=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.exclude_names = tuple(exclude_names)
        if self.exclude_names:
            self.exclude_from_weight_decay(var_names=list(self.exclude_names))
        self._fused_asked = fused  # saved: None, each backend's default again
        if fused is None:
            fused = keras.backend.backend() in _FUSED_BACKENDS and not self.amsgrad
        self.fused = bool(fused)
        if self.fused and self.amsgrad:
            raise ValueError("BertAdamW(fused=True) does not do amsgrad")
        if self.fused and keras.backend.backend() not in _FUSED_BACKENDS:
            raise ValueError("BertAdamW(fused=True) needs the PyTorch or TensorFlow backend")

    def _fused_now(self):
        """The fused PyTorch update, except inside `torch.compile` (Keras'
        `jit_compile` on PyTorch), which cannot trace the fused kernel's
        in-place updates of the variables; there Keras' update is compiled
        instead."""
        if not self.fused or keras.backend.backend() != "torch":
            return False
        import torch

        return not torch.compiler.is_compiling()

    def _backend_apply_gradients(self, grads, trainable_variables):
        """Keras' sequence (clip, decay, update) as one fused kernel call,
        without Keras' evaluation of the learning-rate schedule on the
        device, which the fused update does not read (`_host_learning_rate`);
        Keras' own code with a moving average or per-variable clipping
        (`clipnorm`, `clipvalue`: the fused kernel clips by the global norm
        alone, and they were skipped)."""
        if not self._fused_now() or self.use_ema or self.clipnorm or self.clipvalue:
            return super()._backend_apply_gradients(grads, trainable_variables)
        count = self._host_count()
        steps = self.gradient_accumulation_steps
        if steps:
            return self._fused_accumulate(grads, trainable_variables, count, steps)
        # the kernel decays (p *= 1 - lr * wd) and divides each gradient by
        # the clipping divisor as it reads it: no pass over the gradients here
        self._fused_update(grads, trainable_variables, count + 1, self._divisor(grads, 1))

    def _fused_accumulate(self, grads, trainable_variables, count, steps):
        """Keras' gradient accumulation, fused: each call adds its gradients
        to the accumulators in place (one foreach pass); every `steps`-th
        call updates from the accumulators themselves, their mean's 1/steps
        and the clipping factor both in the kernel's `grad_scale`, then
        zeroes them. (Keras' own code runs its for-loop update here.)"""
        import torch

        accumulators = [self._accumulated_gradients[self._get_variable_index(v)].value
                        for v in trainable_variables]
        with torch.no_grad():
            torch._foreach_add_(accumulators, [
                g if g.dtype == a.dtype else g.to(a.dtype) for g, a in zip(grads, accumulators)])
            if (count + 1) % steps:
                return
            self._fused_update(accumulators, trainable_variables, (count + 1) // steps,
                               self._divisor(accumulators, steps))
            torch._foreach_zero_(accumulators)

    def _divisor(self, grads, steps):
        """What the kernel divides `grads` by to get Keras' update gradients:
        their mean over `steps` calls (`grads` are the sum), clipped to
        `global_clipnorm`; None when that is 1."""
        import torch

        if not self.global_clipnorm:
            return None if steps == 1 else torch.tensor(float(steps), dtype=torch.float32,
                                                        device=grads[0].device)
        norm = _global_norm(torch, [g for g in grads if g is not None]) / steps
        # Keras' formula: scale = clip * min(1 / norm, 1 / clip)
        scale = self.global_clipnorm * torch.clamp_max(1.0 / norm, 1.0 / self.global_clipnorm)
        return (steps / scale).to(torch.float32)

    def _fused_update(self, grads, trainable_variables, step, divisor):
        """Update `step` (1-based: `iterations + 1`) by torch's fused AdamW,
        each gradient divided by `divisor` (a 0-d tensor, or None)."""
        import torch
        from torch.autograd.graph import increment_version

        with torch.no_grad():
            step = float(step)
            lr = self._host_learning_rate(step)
            # torch divides sqrt(v) by sqrt(1 - b2^t) before adding epsilon; scaling
            # epsilon by the same factor gives Keras' (sqrt(v) + eps) instead
            eps = self.epsilon / (1.0 - self.beta_2 ** step) ** 0.5
            groups = self._fused_groups(trainable_variables)
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

    def _fused_tf(self, variable):
        """Whether the TensorFlow kernels update `variable` (a `tf.Variable`
        or a Keras variable)."""
        return (self.fused and keras.backend.backend() == "tensorflow"
                and variable.dtype == "float32")

    def _apply_weight_decay(self, variables):
        """Keras' decoupled decay, `var -= var * wd * lr` for every variable
        it decays, with the learning rate evaluated once (Keras evaluates
        the schedule per variable) and each variable's decay one
        `ResourceApplyGradientDescent` (`var -= (lr * wd) * var`)."""
        if self.weight_decay is None or not all(self._fused_tf(v) for v in variables):
            return super()._apply_weight_decay(variables)
        import tensorflow as tf

        decayed = [v.value if isinstance(v, keras.Variable) else v
                   for v in variables if self._use_weight_decay(v)]
        if not decayed:
            return
        rate = tf.cast(self.learning_rate, "float32") * tf.cast(self.weight_decay, "float32")

        def decay(variable, rate):
            tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=rate,
                                                    delta=variable.read_value())

        def apply(distribution, variables):
            for variable in variables:
                distribution.extended.update(variable, decay, args=(rate,), group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(
            apply, self._distribution_strategy, decayed)

    def update_step(self, gradient, variable, learning_rate):
        """Keras' Adam update of one variable as TensorFlow's Adam kernel
        (`_fused_tf`); Keras' own code elsewhere. Under a distribution
        strategy it runs inside `extended.update`, as Keras' does, so the
        handles are the current replica's."""
        if not self._fused_tf(variable):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        i = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, "float32")
        beta_1 = tf.constant(self.beta_1, "float32")
        beta_2 = tf.constant(self.beta_2, "float32")
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[i].handle, v=self._velocities[i].handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, "float32"), beta1=beta_1, beta2=beta_2,
            epsilon=tf.constant(self.epsilon, "float32"),
            grad=tf.cast(tf.convert_to_tensor(gradient), "float32"), use_locking=False)

    def _host_count(self):
        """Keras' count of `apply` calls so far (`_iterations`, which is
        `iterations` unless gradients are accumulated) as a Python int, read
        from the device only when it may have changed other than by Keras'
        own increment after the last call: on a GPU each read waits for the
        whole backward pass, with the GPU idle while the update is launched.
        Keras' `assign_add(1)` bumps the counter tensor's version by one;
        any other write (a restore, `assign`) bumps it again."""
        value = self._iterations.value
        known = getattr(self, "_step_mirror", None)
        if known is not None and known[0] is value and value._version == known[1] + 1:
            count = known[2] + 1
        else:
            count = int(keras.ops.convert_to_numpy(value))
        object.__setattr__(self, "_step_mirror", (value, value._version, count))
        return count

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
        # fused: each backend's default again, unless turned off (False on
        # JAX by default is not turned off: a JAX checkpoint resumed on
        # PyTorch fuses)
        return {**super().get_config(), "exclude_names": list(self.exclude_names),
                "fused": False if self._fused_asked is False else None}


# Where `BertAdamW` has a fused update by default.
_FUSED_BACKENDS = ("torch", "tensorflow")


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
               max_grad_norm=1.0, epsilon=1e-8, fused=None, gradient_accumulation=1,
               warmup_steps=None):
    """AdamW as BERT fine-tuning uses it: no decay on LayerNorm and biases,
    warmup then linear decay, global-norm gradient clipping. `total_steps`
    counts updates; the warmup is `warmup_steps` of them, or the
    `warmup_ratio` of them rounded up (transformers' TrainingArguments). With
    `gradient_accumulation` k > 1 each update is the mean gradient of k
    batches (see `apply_accumulated` for an epoch's leftover batches)."""
    if warmup_steps is None:
        warmup_steps = math.ceil(total_steps * warmup_ratio)
    schedule = WarmupLinearDecay(learning_rate, warmup_steps, total_steps)
    return BertAdamW(learning_rate=schedule, weight_decay=weight_decay, beta_1=0.9,
                     beta_2=0.999, epsilon=epsilon, global_clipnorm=max_grad_norm,
                     fused=fused, gradient_accumulation_steps=(
                         gradient_accumulation if gradient_accumulation > 1 else None))


def apply_accumulated(optimizer):
    """Apply the gradients `optimizer` has accumulated since its last update
    as one update of their mean; returns how many batches that was (0: none
    waiting, or no accumulation).

    With `gradient_accumulation_steps=k`, Keras updates after every k-th
    batch and keeps the rest waiting, so an epoch of n batches, n not a
    multiple of k, would end with n % k batches' gradients not yet applied
    (evaluated without them) and carry them into the next epoch's first
    update. transformers' Trainer updates from them at the end of the epoch,
    so every epoch has ceil(n / k) updates; this does the same. Call it
    between steps (`ApplyAccumulated` does at each epoch's end): the waiting
    sum is rescaled so that Keras' next update, run from zero gradients,
    divides it by the batches it holds, not by k.
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # (a LossScaleOptimizer's)
    steps = optimizer.gradient_accumulation_steps
    if not steps:
        return 0
    count = int(ops.convert_to_numpy(optimizer._iterations))
    waiting = count % steps
    if not waiting:
        return 0
    # only the variables that got gradients: Keras leaves out those that get
    # none (a task model's unused pooler), and so their decay and moments
    used = [(v, a) for v, a in zip(optimizer._trainable_variables,
                                   optimizer._accumulated_gradients)
            if a is not None and bool(ops.convert_to_numpy(ops.any(ops.not_equal(a, 0))))]
    for _, accumulator in used:
        accumulator.assign(accumulator * (steps / waiting))
    optimizer._iterations.assign(count + steps - waiting - 1)  # the group's last batch
    optimizer.apply([ops.zeros(v.shape, v.dtype) for v, _ in used], [v for v, _ in used])
    return waiting


@keras.saving.register_keras_serializable(package="bertdesk")
class BertLamb(_ClipsSummedGradients, _SchedulesByUpdate, keras.optimizers.Optimizer):
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
