"""The noise schedule: the part of a model that sets gamma(s) = log(sigma(s)^2 / alpha(s)^2), in one home.

Every model's parameters are one tree {"network": ..., "schedule": ...} (VDM's model always holds its gamma
module). "schedule" is empty ({}) for a fixed SDE (vp, subvp, ve) and holds the monotone network of
models/noise_schedule.py for the learned VP (learned_vp). A schedule builds its part, turns it into the
forward SDE, names the clock every truncation is read on, and sets its part's optimizer and gradients:

    schedule = make_schedule("learned_vp", beta_min=0.1, beta_max=20.0)
    params = {"network": ..., "schedule": schedule.init(rng)}
    sde = schedule.sde(params["schedule"])        # the forward SDE of these parameters
    schedule.reference                            # the SDE whose times name t_eps and the network's input
    tx = optimizer(network_tx, schedule.optimizer(learning_rate))
    loss, grads = schedule.value_and_grad(per_example_losses, params)

Nothing outside this module asks which schedule it holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from diffvar.models.noise_schedule import NoiseSchedule
from diffvar.sde import SDE, SDES, VPSDE, VPSDEBase

SCHEDULES = (*SDES, "learned_vp")
# The objectives whose expected loss depends on a learned schedule only through its end points (dsm and ssm
# weight the noise levels by the time density, which the interior moves; diffvar/objectives.py).
LEARNED_SCHEDULE_OBJECTIVES = ("dsm_is", "dsm_lw", "elbo")


@struct.dataclass
class LearnedVPSDE(VPSDEBase):
    """VP SDE of a learned schedule B(s) = int_0^s beta = module.apply({"params": params}, s) (VDM's gamma in this
    framework; models/noise_schedule.py): B increasing with B(0) = 0 (so Y_0 = x); beta = B' by jax.jvp. The
    network is conditioned on the time at which the fixed VP `reference` has the same gamma, so it sees s only
    through gamma(s) and the ELBO depends on the schedule only through B(T)."""

    module: NoiseSchedule = struct.field(pytree_node=False)
    params: dict
    reference: VPSDE = struct.field(pytree_node=False, default_factory=VPSDE)

    @property
    def T(self) -> float:
        return self.reference.T

    def int_beta(self, t: jax.Array) -> jax.Array:
        """B(t), [n]."""
        return self.module.apply({"params": self.params}, t)

    def beta(self, t: jax.Array) -> jax.Array:
        """B'(t), [n]."""
        return jax.jvp(self.int_beta, (t,), (jnp.ones_like(t),))[1]

    def int_beta_inv(self, b: jax.Array, iterations: int = 30) -> jax.Array:
        """The t in [0, T] with B(t) = b, [n]: bisection, then one Newton step whose derivative is the implicit
        function's, dt = (db - dB) / B'(t) (so gradients reach B's parameters and b)."""

        def halve(_, lo_hi):
            lo, hi = lo_hi
            mid = 0.5 * (lo + hi)
            below = self.int_beta(mid) < b
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, iterations, halve, (jnp.zeros_like(b), jnp.full_like(b, self.T)))
        t = jax.lax.stop_gradient(0.5 * (lo + hi))
        return t - (self.int_beta(t) - b) / jax.lax.stop_gradient(self.beta(t))

    def network_time(self, t: jax.Array) -> jax.Array:
        """The reference VP's time with the same gamma (B), [n]."""
        return self.reference.int_beta_inv(self.int_beta(t))

    def truncation_time(self, t: float) -> float | jax.Array:
        """B^-1(B_ref(t)), a scalar array for a float t (0.0 stays the float 0.0: B(0) = 0): the time of the
        reference's gamma(t) under this schedule; its gradient keeps gamma there fixed (int_beta_inv's)."""
        if t == 0.0:
            return 0.0
        return self.int_beta_inv(self.reference.int_beta(jnp.full((1,), t, jnp.float32)))[0]


@dataclasses.dataclass(frozen=True)
class FixedSchedule:
    """A fixed SDE's schedule: no parameters; its SDE is its own clock."""

    reference: SDE

    def init(self, rng: jax.Array) -> dict:
        return {}

    def sde(self, params: dict) -> SDE:
        return self.reference

    def optimizer(self, learning_rate: optax.Schedule) -> optax.GradientTransformation:
        return optax.identity()

    def value_and_grad(self, losses: Callable, params: dict) -> tuple[jax.Array, dict]:
        """(mean of losses(params) [B], its gradient)."""
        return jax.value_and_grad(lambda p: jnp.mean(losses(p)))(params)


@dataclasses.dataclass(frozen=True)
class LearnedSchedule:
    """VDM's learned schedule (appendix I.2): the network and B(T) descend the mean loss, the interior the
    variance of the loss estimator. Its own Adam (lr_scale times the network's learning rate, optional
    global-norm clipping at grad_clip): a variance's gradients are on another scale than the network's."""

    module: NoiseSchedule
    reference: VPSDE
    lr_scale: float = 1.0
    grad_clip: float = 0.0

    def init(self, rng: jax.Array) -> dict:
        return self.module.init(rng, jnp.ones((1,)))["params"]

    def sde(self, params: dict) -> LearnedVPSDE:
        return LearnedVPSDE(self.module, params, self.reference)

    def optimizer(self, learning_rate: optax.Schedule) -> optax.GradientTransformation:
        lr = learning_rate if self.lr_scale == 1.0 else lambda step: self.lr_scale * learning_rate(step)
        clip = [optax.clip_by_global_norm(self.grad_clip)] if self.grad_clip else []
        return optax.chain(*clip, optax.adam(lr))

    def value_and_grad(self, losses: Callable, params: dict) -> tuple[jax.Array, dict]:
        """(mean loss, gradients): the interior's are d Var[L] / d eta = E[2 (L - E L) dL / d eta], from a second
        pullback of the same forward pass; every other parameter's (B(T)'s `log_end` included) the mean's."""
        values, pullback = jax.vjp(losses, params)
        n = values.shape[0]
        (grads,) = pullback(jnp.full_like(values, 1.0 / n))
        (var_grads,) = pullback(2.0 * (values - jnp.mean(values)) / n)
        interior = {k: v for k, v in var_grads["schedule"].items() if k != "log_end"}
        return jnp.mean(values), {**grads, "schedule": {**grads["schedule"], **interior}}


def optimizer(network: optax.GradientTransformation, schedule: optax.GradientTransformation):
    """One optimizer over {"network": ..., "schedule": ...}: each part its own transformation."""
    labels = lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}
    return optax.multi_transform({"network": network, "schedule": schedule}, labels)


def make_schedule(
    name: str,
    T: float = 1.0,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    sigma_min: float = 0.01,
    sigma_max: float = 50.0,
    learn_end: bool = False,
    schedule_features: int = 128,
    schedule_lr_scale: float = 1.0,
    schedule_grad_clip: float = 0.0,
) -> FixedSchedule | LearnedSchedule:
    """The schedule called `name` (one of SCHEDULES) from the config's sde section (its keys are these
    arguments): a fixed SDE, or the learned VP initialised at (and read on the clock of) the linear VP."""
    if name not in SCHEDULES:
        raise ValueError(f"name={name!r} is not allowed; choose one of {', '.join(SCHEDULES)}")
    if name == "ve":
        return FixedSchedule(SDES["ve"](sigma_min=sigma_min, sigma_max=sigma_max, T=T))
    vp = dict(beta_min=beta_min, beta_max=beta_max, T=T)
    if name != "learned_vp":
        return FixedSchedule(SDES[name](**vp))
    module = NoiseSchedule(**vp, features=schedule_features, learn_end=learn_end)
    return LearnedSchedule(module, VPSDE(**vp), schedule_lr_scale, schedule_grad_clip)


def check_objective(name: str, objective: str, learn_end: bool) -> None:
    """Raises ValueError (one line) for an objective that schedule `name` cannot train."""
    if name == "learned_vp" and objective not in LEARNED_SCHEDULE_OBJECTIVES:
        raise ValueError(
            f"objective.name={objective!r} with sde.name='learned_vp': a learned schedule needs an "
            f"objective whose expectation depends on the schedule only through its end points: "
            f"{', '.join(LEARNED_SCHEDULE_OBJECTIVES)}"
        )
    if name == "learned_vp" and learn_end and objective != "elbo":
        raise ValueError(
            f"sde.learn_end=True needs objective.name='elbo' (the full bound, prior term included: "
            f"its gradient is the ELBO's), got objective.name={objective!r}"
        )
