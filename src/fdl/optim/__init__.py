"""Optimizers as chains of hand-written transforms, each a pure state update.

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
* Composition: each method is one transform that turns gradients into a
  direction (`scale_by_adam`, `scale_by_rms`, `trace`, `scale_by_lion`, …, in
  `fdl.optim.methods`, with its equations), and `chain` feeds each transform's
  output to the next. The named optimizers are short chains, registered with
  `@register` (which builds the transforms under the optimizer's name and adds
  the input checks): `adamw(η, …)` is `chain(scale_by_adam(b1, b2, eps),
  add_decayed_weights(λ), scale_by_learning_rate(η))`. Adding an optimizer is a
  transform (one idea, in `methods`) and a registered chain (in `optimizers`);
  `OPTIMIZERS` then lists it for `get_optimizer`, the command line, checkpoints
  and the recogniser of foreign states.
  Clipping, weight decay and gradient accumulation compose the same way:
  `chain(clip_by_global_norm(1.0), adamw(1e-3, weight_decay=1e-4))`,
  `accumulate_gradients(adam(1e-3), 4)`.
* Where things are: `methods` (one moving-average method each: momentum,
  Adagrad, Adadelta, RMSProp, Adam/NAdam/AMSGrad, Adamax, Lion, RAdam,
  AdaBelief), `blocks` (per-leaf scalings: trust ratio, Adafactor's factored
  moments and clipping), `orthogonal` (Muon), `schedule_free`, `transforms`
  (learning rate, weight decay, clipping, accumulation), `wrappers` (lookahead,
  partition/masked/freeze by parameter path, apply_if_finite, ema_params),
  `sharpness` (SAM and `sam_step`), `quasi_newton` (L-BFGS and `lbfgs_step`),
  `loss_scaling` (dynamic loss scaling for float16), `schedules` (including
  SGDR, `join_schedules` and `reduce_on_plateau`), `hyperparams`, `registry`.
  Optimizers that need the loss itself (SAM's second gradient, L-BFGS's line
  search) come with a step helper taking the loss function.
* `state` is a NamedTuple, one class per transform (`ScaleByAdamState(count, mu,
  nu, nu_max)`, …); a chain's, and so every named optimizer's, is
  `ChainState(count, states)`. States are pytrees: they pass through `jit`,
  `vmap`, `lax.scan` and checkpoints unchanged in structure and dtypes.
  `count` (int32[], updates so far, saturating at 2³¹−1) is kept by the
  transforms that need it and by `ChainState`.
* Accumulators (moments, velocities) are float32 for 16-bit params and the
  params' dtype otherwise; `updates` have the dtype of the grads;
  `apply_updates` keeps each param's dtype.
* Learning rates are floats or schedules (`step -> learning rate`, see
  `fdl.optim.schedules`), evaluated once per update at the count in the state.
* Hyperparameters are fixed when an optimizer is built. To read and change them
  between steps without recompiling, wrap the factory:
  `opt = inject_hyperparams(adam)(learning_rate=1e-3)`; then
  `state.hyperparams` is a dict of scalar arrays (`learning_rate`, `b1`, …) and
  `state = set_hyperparams(state, learning_rate=3e-4)` changes one.
* `update` has no side effects; the second call of a jitted step reuses the
  first one's compilation.
* Errors: factories check their arguments at construction and raise
  `ValueError` (or `TypeError` for a wrong type) naming the function, the
  argument, the expectation and the value given. `update` checks its inputs at
  trace time (no cost per step under `jit`): non-float gradients are a
  `TypeError` naming the leaf path and dtype; a structure or shape mismatch
  between grads, state and params is a `ValueError` naming the leaf path (and
  both shapes); a state from another optimizer is a `TypeError` naming the
  optimizer expected and the one the state came from.

This is the shape of the JAX ecosystem's gradient transformations (an
`init`/`update` pair with `update(grads, state, params)`), so an fdl optimizer
can be passed to code written for them, and theirs composed with `chain`.
"""

from fdl.optim import (
    blocks,
    hyperparams,
    loss_scaling,
    methods,
    optimizers,
    orthogonal,
    quasi_newton,
    registry,
    schedule_free,
    schedules,
    sharpness,
    transforms,
    wrappers,
)
from fdl.optim.base import ChainState, Optimizer, Schedule, apply_updates, chain
from fdl.optim.blocks import *  # noqa: F403
from fdl.optim.hyperparams import *  # noqa: F403
from fdl.optim.loss_scaling import *  # noqa: F403
from fdl.optim.methods import *  # noqa: F403
from fdl.optim.optimizers import *  # noqa: F403
from fdl.optim.orthogonal import *  # noqa: F403
from fdl.optim.quasi_newton import *  # noqa: F403
from fdl.optim.registry import *  # noqa: F403
from fdl.optim.schedule_free import *  # noqa: F403
from fdl.optim.schedules import *  # noqa: F403
from fdl.optim.sharpness import *  # noqa: F403
from fdl.optim.transforms import *  # noqa: F403
from fdl.optim.wrappers import *  # noqa: F403

__all__ = [
    "Optimizer",
    "Schedule",
    "apply_updates",
    "chain",
    "ChainState",
    *registry.__all__,
    *optimizers.__all__,
    *orthogonal.__all__,
    *schedule_free.__all__,
    *methods.__all__,
    *transforms.__all__,
    *blocks.__all__,
    *wrappers.__all__,
    *sharpness.__all__,
    *quasi_newton.__all__,
    *loss_scaling.__all__,
    *hyperparams.__all__,
    *schedules.__all__,
]
