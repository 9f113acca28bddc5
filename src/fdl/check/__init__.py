"""Verify hand-derived gradients against autodiff and finite differences.

The checks
----------
* `vjp(f, *args)` — a primitive's hand-written VJP rule vs `jax.vjp` of its plain
  forward vs central finite differences, with a random cotangent. `f` may also
  be any function built from fdl primitives (manual mode vs autodiff mode).
* `grad(f, my_grad, *args)` — *your* gradient of a scalar function vs `jax.grad`
  vs finite differences.
* `jacobian(f, my_jacobian, *args)` — your full Jacobian vs `jax.jacrev` vs
  finite differences.
* `model(loss_fn, params, *batch)` — a whole model's gradient with the manual
  rules vs pure autodiff, plus directional finite differences.
* `jvp(f, *args)`, `adjoint(p, *args)` and `hvp(f, *args)` — forward mode and second
  order (`fdl.check.forward`): a tangent rule vs autodiff vs finite differences, the
  hand tangent rule against the hand backward (`⟨u, J v⟩ = ⟨Jᵀu, v⟩`), and
  Hessian-vector products forward over reverse.
* `examples(p, dtype=..., seed=...)` — every registered example of a primitive, its
  `vjp`, `jvp` and `adjoint` checks (or those chosen with `checks=`), in one compiled
  program (what `fdl check` runs).

The modules: `report` (comparisons and the table), `arguments` (a call's arguments
as named leaves), `fd` (finite differences: planning, evaluation, switching points),
`rows` (what the checks share), `reverse` (`vjp`), `derivations` (`grad`,
`jacobian`), `forward`, `models` (`model`) with `bisect`, and `registered` (the
registry runner); each imports only those before it.

A check compares a hand-written rule with autodiff. Given a function with no fdl
primitive (`vjp`, `jvp`, `hvp`, `model`), or a derivation that is JAX's own
(`grad(f, jax.grad(f), x)`), there is nothing to compare: the report says "compared
nothing: no hand-written rule ran" and does not pass.

Each returns a `Report`: one row per (argument or pytree leaf, reference) with
the largest absolute and relative error, the worst element's index with both
values, the tolerance (and for finite differences the step) used there, the
dtype, and whether it passed. `str(report)` is a readable table; its title names
the arguments' dtypes and the dtype the finite differences were taken in.
`report.passed` (also `bool(report)`) says whether every row passed — a report
with no rows (nothing differentiable was given) does not pass;
`report.raise_if_failed()` is the raising form for tests, raising `CheckFailed`
with the table as its message.

A row fails, with the reason in `problem`, when the value under test has the
wrong shape (a primitive's backward returning `∂L/∂W` transposed is reported as
such, not as an XLA error), a dtype other than its argument's (a float64 check is
never passed at float32 accuracy), or a non-finite value where the reference is
finite. A failing row also gets a hint for two recognisable mistakes: a square
matrix that is the reference transposed, and a value that is a constant multiple
of the reference (a missing `1/N`, a sign error).

Tolerances
----------
An element passes when `|m − r| ≤ atol + rtol·|r|`, `m` the value under test and
`r` the reference. Against autodiff, `rtol` depends on the argument's dtype
(`tolerance`: 1e-10 for float64, 1e-5 for float32, 2e-2 for bfloat16/float16)
and `atol = rtol·max|r| + 100·ε·S` over the leaf, so values near zero are judged
against the leaf's scale, and a leaf whose true gradient is zero (a bias before
a normalisation) is not failed for roundoff; `S` is the larger of the largest
reference value over all leaves of the check and `F / max(1, max|x|)`, `F` the
magnitude of the function's value (`Σ|u||y|` for `vjp`'s `⟨u, f(x)⟩`). The
reported *relative error* is leaf-wise, `max|m − r| / max|r|`.

Against finite differences the tolerance follows the conditioning of the point:
each element's `atol` adds `4 × E` to the above, `E` the finite difference's own
estimated error (the disagreement of two step sizes plus the rounding bound
`3·ε·F/h`; see `fdl.check.fd`). Differences are taken in float64 when
`jax_enable_x64` is on, else in the arguments' dtype, bfloat16 and float16 in
float32; the title says which. Steps are chosen per element or direction from a
ladder, relative to the scale of `x` along that direction, and directions are of
unit norm (a large leaf is checked along its reference gradient's direction and
random ones; the row says so, e.g. `w (gradient and 3 random directions)`, and
its index is then `(direction, …)`).

What float32 detects. On a representative case, the weight gradient `∂L/∂W` of a
dense layer under softmax cross-entropy (`X ∈ ℝ^{16×8}`, `W ∈ ℝ^{8×5}`), checked
with JAX's defaults (float32, x64 off), an error of `1.5e-4` relative in its largest
element fails against autodiff, at that element, and `1e-4` passes; against finite
differences (float32 too) the error must be about `4e-4`. The autodiff threshold is
`rtol·(|r| + max|r|)` plus the roundoff floor `100·ε·S`, which dominates when the loss
is larger than the gradient (here `S ≈ 8·max|r|`). Finite differences in float32
resolve a derivative to about `ε·F/h` (1e-5 to 1e-3 relative): they confirm the
reference, the autodiff row carries the fine comparison.

On a ReLU CNN (`Conv2D(4, 3×3)` → ReLU → 2×2 max-pool → `Dense(10)` under softmax
cross-entropy, 16 images of 8×8, float32), a hand-written backward off by a factor
`1 + r` in one primitive (the convolution, the ReLU or the max-pool; each scales the
convolution's parameter gradient) fails `check.model` at 10 of 10 initialisations for
`r = 1.5e-4`, at 7 of 10 for `1e-4` and at none for `5e-5`; in the final dense layer
`r = 1e-4` fails at 10 of 10. Correct models do not fail: `tests/test_check_models.py`
passes fifteen of them (MLPs, CNNs, normalisation, dropout, recurrent and attention
models) at 20 initialisations each, and fails each with a 1% wrong rule at every one.

Kinks. Where a non-smooth primitive switches (ReLU at 0, max-pool's arg-max, declared
with `switches=`), the function is not differentiable and a difference quotient across
the switch is not the derivative. The finite differences see every switch of the
primitives called (`fdl.check.fd`): a step that changes one is refused, smaller steps
are tried down to `2·ε^{1/2}` of the scale, and a row notes how many switching points
its steps avoided. Where no step down to that limit avoids them, the direction is
*not differentiable within reach*: the row's note says so with the number of
switching points the smallest step crosses, e.g.

    note: params['conv2d_0']['w'] (gradient and 1 random direction) vs finite
    differences: direction 0: not differentiable within reach: 1 switching point
    crossed at this point

and that direction is not judged against finite differences; the row fails only if
manual and autodiff disagree there too (the autodiff row carries the comparison). In
float32 this is common for the parameters before thousands of ReLUs (a CNN's
convolutions): about one switch per `10⁻³` of step.

Speed: a check is one XLA program (the reference, the finite differences as one
`vmap` over all stencil points and, with `jit=True`, the rule under test),
compiled at XLA's lowest backend optimisation (tiny arrays: compiling is the
cost). Random cotangents and directions are drawn on the host.
"""

from fdl.check import fd
from fdl.check.bisect import Divergence, ModelReport
from fdl.check.derivations import grad, jacobian
from fdl.check.forward import adjoint, hvp, jvp
from fdl.check.models import model
from fdl.check.registered import Checked, examples
from fdl.check.report import (AUTODIFF, FINITE_DIFFERENCES, CheckFailed, Comparison, Report,
                              compare, tolerance)
from fdl.check.reverse import vjp

__all__ = ["CheckFailed", "Checked", "Comparison", "Divergence", "ModelReport", "Report",
           "adjoint", "compare", "examples", "fd", "grad", "hvp", "jacobian", "jvp", "model",
           "tolerance", "vjp", "AUTODIFF", "FINITE_DIFFERENCES"]
