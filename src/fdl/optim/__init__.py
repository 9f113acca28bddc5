"""Optimizers as pure state updates, written by hand.

The contract
------------
An optimizer (and every gradient transform) is a NamedTuple of two pure functions::

    opt = fdl.optim.adam(1e-3)                 # validate hyperparameters, build
    state = opt.init(params)                   # init(params) -> state
    updates, state = opt.update(grads, state, params)
                                               # update(grads, state, params=None)
                                               #     -> (updates, new_state)
    params = fdl.optim.apply_updates(params, updates)   # params + updates

* `params`, `grads` and `updates` are pytrees of float arrays with one structure
  (float32, float64, bfloat16 or float16 leaves; `None` leaves are skipped).
  `updates` already point downhill: they are *added* to the params.
* `params` is only needed by transforms that read the parameters (weight decay);
  passing it always is harmless.
* `state` is a named NamedTuple per optimizer (`AdamState(count, mu, nu,
  hyperparams)`, …): a pytree, so it passes through `jit`, `vmap`, `lax.scan`
  and checkpoints unchanged in structure and dtypes. Every state holds
  `count` (int32[], number of updates so far) and, except `ChainState`,
  `hyperparams`: a dict of scalar arrays with the hyperparameters by argument
  name, including `hyperparams["learning_rate"]`, the learning rate the next
  update will apply (`schedule(count)` for a schedule).
* Accumulators (moments, velocities) are float32 for 16-bit params and the
  params' dtype otherwise; `updates` have the dtype of the grads;
  `apply_updates` keeps each param's dtype.
* `update` has no side effects; the second call of a jitted step reuses the
  first one's compilation.
* Learning rates are floats or schedules (`step -> learning rate`, see
  `fdl.optim.schedules`), evaluated at the `count` in the state.
* Factories check their arguments at construction and raise `ValueError`
  (or `TypeError` for a wrong type) naming the function, the argument, the
  expectation and the value given.

This is the shape of the JAX ecosystem's gradient transformations (an
`init`/`update` pair with `update(grads, state, params)`), so an fdl optimizer
can be passed to code written for them, and theirs composed with `chain`.

Composition: `chain(clip_by_global_norm(1.0), adamw(1e-3, weight_decay=1e-4))`
feeds each transform's output to the next; `accumulate_gradients(adam(1e-3), 4)`
steps once per 4 micro-batches on their mean gradient.
"""

from fdl.optim.base import ChainState, Optimizer, Schedule, apply_updates, chain
from fdl.optim.optimizers import (
    OPTIMIZERS,
    AdadeltaState,
    AdagradState,
    AdamaxState,
    AdamState,
    AdamWState,
    AMSGradState,
    EMAMomentumState,
    LionState,
    NAdamState,
    RMSPropState,
    SGDState,
    adadelta,
    adagrad,
    adam,
    adamax,
    adamw,
    amsgrad,
    ema_momentum,
    get_optimizer,
    lion,
    nadam,
    rmsprop,
    sgd,
)
from fdl.optim.schedules import (
    constant_schedule,
    cosine_decay_schedule,
    exponential_decay_schedule,
    linear_schedule,
    one_cycle_schedule,
    piecewise_constant_schedule,
    polynomial_schedule,
    warmup_cosine_decay_schedule,
)
from fdl.optim.transforms import (
    AccumulateGradientsState,
    AddDecayedWeightsState,
    ClipByGlobalNormState,
    ClipByValueState,
    ScaleByLearningRateState,
    accumulate_gradients,
    add_decayed_weights,
    clip_by_global_norm,
    clip_by_value,
    global_norm,
    scale_by_learning_rate,
)

__all__ = [
    # protocol
    "Optimizer",
    "Schedule",
    "apply_updates",
    "chain",
    "ChainState",
    # optimizers
    "sgd",
    "ema_momentum",
    "adagrad",
    "adadelta",
    "rmsprop",
    "adam",
    "adamw",
    "adamax",
    "nadam",
    "amsgrad",
    "lion",
    "get_optimizer",
    "OPTIMIZERS",
    "SGDState",
    "EMAMomentumState",
    "AdagradState",
    "AdadeltaState",
    "RMSPropState",
    "AdamState",
    "AdamWState",
    "AdamaxState",
    "NAdamState",
    "AMSGradState",
    "LionState",
    # transforms
    "scale_by_learning_rate",
    "add_decayed_weights",
    "clip_by_global_norm",
    "clip_by_value",
    "global_norm",
    "accumulate_gradients",
    "ScaleByLearningRateState",
    "AddDecayedWeightsState",
    "ClipByGlobalNormState",
    "ClipByValueState",
    "AccumulateGradientsState",
    # schedules
    "constant_schedule",
    "piecewise_constant_schedule",
    "exponential_decay_schedule",
    "polynomial_schedule",
    "linear_schedule",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "one_cycle_schedule",
]
