"""Controllers of the Lagrange multiplier λ ≥ 0 of PPO-Lagrangian.

Safe RLHF solves max_θ min_λ≥0 J_r(θ) − λ (J_c(θ) − d): the actor ascends the combined
advantage (A_r − λ A_c)/(1 + λ) and, once per rollout, a controller moves λ up while the
expected cost J_c exceeds the threshold d and down while it is below. The controllers here
see only numbers (the episode costs of each rollout) and keep plain-Python state, so a
checkpoint is a JSON dict and a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

EpisodeCosts = Iterable[float] | float

# λ's cap unless a config says otherwise: 5, the cap of the Safe RLHF reference recipe. A
# bounded λ keeps the combined advantage (A_r − λ A_c)/(1 + λ) from ignoring the reward, and
# keeps ln λ far from where exp(ln λ) overflows (an unreachable threshold once drove λ to
# 2.9e23 within five steps and the sixth died with OverflowError).
DEFAULT_LAMBDA_MAX = 5.0


def _episode_costs(episode_costs: EpisodeCosts) -> list[float]:
    """One rollout's episode costs as a checked list (a single number is one episode)."""
    if isinstance(episode_costs, numbers.Real):
        costs = [float(episode_costs)]
    else:
        costs = [float(cost) for cost in episode_costs]
    if not costs:
        raise ValueError("episode_costs is empty: a λ update needs at least one episode cost")
    if not all(math.isfinite(cost) for cost in costs):
        raise ValueError(f"episode costs must be finite, got {costs}")
    return costs


def _mean_cost(episode_costs: EpisodeCosts) -> float:
    """Mean of one rollout's episode costs (a single number passes through)."""
    costs = _episode_costs(episode_costs)
    return sum(costs) / len(costs)


def _finite_cap(lambda_max: float) -> float:
    """``lambda_max`` as a float, refused unless it is a positive finite number."""
    if lambda_max is None or not math.isfinite(lambda_max) or lambda_max <= 0:
        raise ValueError(f"lambda_max must be a positive finite number (λ is capped so it cannot overflow), "
                         f"got {lambda_max}")
    return float(lambda_max)


def _check_kind(state: dict[str, Any], expected: str) -> None:
    if state.get("kind") != expected:
        raise ValueError(f"state_dict is for a {state.get('kind')!r} controller, not {expected!r}")


class LagrangeController(ABC):
    """One interface for every λ schedule: read ``value``, ``update`` once per rollout."""

    kind: ClassVar[str]
    threshold: float  # d in E[cost] <= d
    # Updates in a row that ended with λ at its cap. λ pinned at the cap means the cost
    # stays above the threshold however hard the constraint pulls: a threshold this policy
    # cannot reach within its budget (the driver reports it; the run goes on at the cap).
    at_cap_steps: int = 0

    @property
    @abstractmethod
    def value(self) -> float:
        """The current multiplier λ ≥ 0."""

    @abstractmethod
    def update(self, episode_costs: EpisodeCosts) -> float:
        """Feed the episode costs of one rollout (a list, or its mean) and return the new λ."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable state; loading it resumes the schedule identically."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class LogLambdaController(LagrangeController):
    """Safe RLHF's multiplier update, gradient ascent on ln λ (Dai et al. 2023, eq. 31):

        ln λ_{k+1} = ln λ_k + α · λ_k · (J_c − d)

    which is one SGD step on the dual loss −λ (J_c − d) with respect to η = ln λ
    (∂/∂η of e^η (J_c − d) is λ (J_c − d)); working in ln λ keeps λ > 0 without clipping.
    J_c is the mean cost of the last ``window`` *episodes* (responses), across rollouts, as the
    Safe RLHF reference averages its last ``episode_cost_window_size`` episodes: one rollout's
    mean is a noisy estimate of E[cost]. ``window=None`` uses this rollout's episodes alone
    (a single number passed to ``update`` counts as one episode). ln λ is clamped to ≤ ln λ_max (finite, ``DEFAULT_LAMBDA_MAX`` unless given), so
    the step α·λ·(J_c − d) stays bounded and exp(ln λ) never overflows. During the first
    ``update_delay`` calls λ stays fixed (costs are still recorded) so the critics can warm
    up before the constraint bites.

    The step in ln λ is proportional to λ, so a λ that has decayed towards 0 (a constraint
    slack for a while) answers a later violation e slowly: each update lowers 1/λ by at most
    lr·e, so rising from λ to λ* takes at least (1/λ − 1/λ*)/(lr·e) updates (from 0.035 to 0.5
    at lr 5 and e = 0.1: over 50). ``PIDLagrangeController`` reacts within one update, which
    is why per-category runs, where a slack category can start binding, are better served by it.
    """

    kind: ClassVar[str] = "log_lambda"

    def __init__(
        self,
        threshold: float,
        lambda_init: float,
        lambda_lr: float,
        lambda_max: float = DEFAULT_LAMBDA_MAX,
        update_delay: int = 0,
        window: int | None = None,
    ) -> None:
        if lambda_init <= 0:
            raise ValueError(f"lambda_init must be > 0 (λ is kept as ln λ), got {lambda_init}")
        if lambda_lr < 0:
            raise ValueError(f"lambda_lr must be >= 0, got {lambda_lr}")
        lambda_max = _finite_cap(lambda_max)
        if lambda_max < lambda_init:
            raise ValueError(f"lambda_max ({lambda_max}) must be >= lambda_init ({lambda_init})")
        if update_delay < 0:
            raise ValueError(f"update_delay must be >= 0, got {update_delay}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 episodes (or None: this rollout's), got {window}")
        self.threshold = float(threshold)
        self.lambda_lr = float(lambda_lr)
        self.lambda_max = lambda_max
        self.log_lambda_max = math.log(lambda_max)
        self.update_delay = int(update_delay)
        self.window = None if window is None else int(window)
        self.log_lambda = math.log(lambda_init)
        self.num_updates = 0
        self.at_cap_steps = 0
        self.recent_costs: deque[float] = deque(maxlen=self.window)

    @property
    def value(self) -> float:
        # Exactly λ_max at the cap (exp(ln 5) is 4.999999999999999).
        return self.lambda_max if self.log_lambda >= self.log_lambda_max else math.exp(self.log_lambda)

    def update(self, episode_costs: EpisodeCosts) -> float:
        costs = _episode_costs(episode_costs)
        if self.window is None:
            self.recent_costs.clear()
        self.recent_costs.extend(costs)
        self.num_updates += 1
        if self.num_updates > self.update_delay:
            expected_cost = sum(self.recent_costs) / len(self.recent_costs)
            step = self.lambda_lr * self.value * (expected_cost - self.threshold)
            self.log_lambda = min(self.log_lambda + step, self.log_lambda_max)
        self.at_cap_steps = self.at_cap_steps + 1 if self.log_lambda >= self.log_lambda_max else 0
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "log_lambda": self.log_lambda,
            "num_updates": self.num_updates,
            "recent_costs": list(self.recent_costs),
            "at_cap_steps": self.at_cap_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self.log_lambda = float(state["log_lambda"])
        self.num_updates = int(state["num_updates"])
        self.recent_costs = deque((float(c) for c in state["recent_costs"]), maxlen=self.window)
        self.at_cap_steps = int(state.get("at_cap_steps", 0))  # absent in checkpoints before the cap


class PIDLagrangeController(LagrangeController):
    """PID Lagrangian (Stooke, Achiam & Abbeel 2020, "Responsive Safety in Reinforcement
    Learning by PID Lagrangian Methods", Algorithm 2). Per rollout k, with error e = J_c − d:

        I      ← max(0, I + e)                          (≤ ``integral_max`` when given)
        ∂      ← max(0, J̃_k − J̃_{k−1}),  J̃_k = α J̃_{k−1} + (1 − α) J_c,  J̃_0 = 0
        λ      ← min(λ_max, max(0, K_p e + K_i I + K_d ∂))

    The integral alone is the classic gradient-ascent Lagrangian; the proportional term
    reacts to the current violation and the derivative term to a rising cost, which damps
    the overshoot and oscillation of the pure integral controller. Clamping I at 0 is the
    paper's anti-windup: a long safe spell cannot bank negative integral that would delay the
    response to a later violation. ``derivative_ema_alpha`` = α smooths the cost used by the
    derivative; α = 0 (the default) is exactly Algorithm 2, whose J_prev starts at 0.
    ``lambda_init`` is λ before the first update (λ is recomputed from scratch each update).
    λ_max is finite (``DEFAULT_LAMBDA_MAX`` unless given), like the log-λ controller's cap.
    """

    kind: ClassVar[str] = "pid"

    def __init__(
        self,
        threshold: float,
        kp: float,
        ki: float,
        kd: float,
        lambda_init: float = 0.0,
        lambda_max: float = DEFAULT_LAMBDA_MAX,
        integral_max: float | None = None,
        derivative_ema_alpha: float = 0.0,
    ) -> None:
        if min(kp, ki, kd) < 0:
            raise ValueError(f"PID gains must be >= 0, got kp={kp}, ki={ki}, kd={kd}")
        if lambda_init < 0:
            raise ValueError(f"lambda_init must be >= 0, got {lambda_init}")
        lambda_max = _finite_cap(lambda_max)
        if lambda_init > lambda_max:
            raise ValueError(f"lambda_init ({lambda_init}) must be <= lambda_max ({lambda_max})")
        if integral_max is not None and integral_max < 0:
            raise ValueError(f"integral_max must be >= 0, got {integral_max}")
        if not 0.0 <= derivative_ema_alpha < 1.0:
            raise ValueError(f"derivative_ema_alpha must be in [0, 1), got {derivative_ema_alpha}")
        self.threshold = float(threshold)
        self.kp, self.ki, self.kd = float(kp), float(ki), float(kd)
        self.lambda_max = lambda_max
        self.integral_max = None if integral_max is None else float(integral_max)
        self.derivative_ema_alpha = float(derivative_ema_alpha)
        self.lambda_value = float(lambda_init)
        self.integral = 0.0
        self.smoothed_cost = 0.0
        self.num_updates = 0
        self.at_cap_steps = 0

    @property
    def value(self) -> float:
        return self.lambda_value

    def update(self, episode_costs: EpisodeCosts) -> float:
        expected_cost = _mean_cost(episode_costs)
        error = expected_cost - self.threshold
        self.integral = max(0.0, self.integral + error)
        if self.integral_max is not None:
            self.integral = min(self.integral, self.integral_max)
        previous_smoothed_cost = self.smoothed_cost
        alpha = self.derivative_ema_alpha
        self.smoothed_cost = alpha * previous_smoothed_cost + (1.0 - alpha) * expected_cost
        derivative = max(0.0, self.smoothed_cost - previous_smoothed_cost)
        raw_lambda = self.kp * error + self.ki * self.integral + self.kd * derivative
        self.lambda_value = min(max(0.0, raw_lambda), self.lambda_max)
        self.num_updates += 1
        self.at_cap_steps = self.at_cap_steps + 1 if self.lambda_value >= self.lambda_max else 0
        return self.lambda_value

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "lambda": self.lambda_value,
            "integral": self.integral,
            "smoothed_cost": self.smoothed_cost,
            "num_updates": self.num_updates,
            "at_cap_steps": self.at_cap_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self.lambda_value = float(state["lambda"])
        self.integral = float(state["integral"])
        self.smoothed_cost = float(state["smoothed_cost"])
        self.num_updates = int(state["num_updates"])
        self.at_cap_steps = int(state.get("at_cap_steps", 0))


class ConstantLagrange(LagrangeController):
    """A fixed λ: 0 is plain PPO on the reward, λ > 0 a fixed cost penalty (reward shaping).
    ``threshold`` is only the limit d that violations are reported against (λ ignores it), so
    that a plain-PPO run reads on the same scale as the PPO-Lag runs it is compared with."""

    kind: ClassVar[str] = "constant"

    def __init__(self, value: float = 0.0, threshold: float = 0.0) -> None:
        if value < 0:
            raise ValueError(f"a Lagrange multiplier must be >= 0, got {value}")
        self._value = float(value)
        self.threshold = float(threshold)

    @property
    def value(self) -> float:
        return self._value

    def update(self, episode_costs: EpisodeCosts) -> float:
        _mean_cost(episode_costs)  # same input validation as the adaptive controllers
        return self._value

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self._value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self._value = float(state["value"])


class PerCategoryLagrange:
    """K constraints E[c_k] ≤ d_k (one per harm category, or per named group of categories),
    each with its own multiplier λ_k. The controllers are the scalar ones above, one per
    constraint, so every update rule (log-λ, PID, constant) works elementwise over K without a
    second copy: λ_k moves only with category k's episode costs against its own threshold d_k.
    The actor's advantage is (A_r − Σ_k λ_k A_c,k) / (1 + Σ_k λ_k) (``combined_advantage``).
    """

    kind: ClassVar[str] = "per_category"
    # The limit of the run's scalar cost summary (``cost/mean`` of a per-category run is the
    # largest excess max_k (J_c,k − d_k), so "within every limit" reads cost/mean ≤ 0).
    threshold: float = 0.0

    def __init__(self, controllers: dict[str, LagrangeController]) -> None:
        if not controllers:
            raise ValueError("per-category constraints need at least one category")
        self.controllers = dict(controllers)

    @property
    def names(self) -> list[str]:
        return list(self.controllers)

    @property
    def thresholds(self) -> list[float]:
        return [controller.threshold for controller in self.controllers.values()]

    @property
    def value(self) -> list[float]:
        """λ_k of each category, in ``names`` order."""
        return [controller.value for controller in self.controllers.values()]

    @property
    def lambda_max(self) -> float:
        return max(getattr(c, "lambda_max", math.inf) for c in self.controllers.values())

    @property
    def at_cap_steps(self) -> int:
        """The longest streak at the cap among the categories (each is a constraint of its own)."""
        return max(controller.at_cap_steps for controller in self.controllers.values())

    def update(self, episode_costs: Sequence[Sequence[float]]) -> list[float]:
        """Feed one rollout's episode costs, [B][K] (one row of K category costs per response),
        and return the new λ_k."""
        rows = [list(row) for row in episode_costs]
        if not rows or any(len(row) != len(self.controllers) for row in rows):
            raise ValueError(f"per-category episode costs must be [B][K] with K = {len(self.controllers)} "
                             f"({', '.join(self.controllers)}); got {len(rows)} rows of lengths "
                             f"{sorted({len(row) for row in rows})}")
        return [controller.update([row[k] for row in rows])
                for k, controller in enumerate(self.controllers.values())]

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "categories": {name: c.state_dict() for name, c in self.controllers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        if list(state["categories"]) != self.names:
            raise ValueError(f"state_dict holds the categories {list(state['categories'])}, this controller "
                             f"{self.names}")
        for name, controller in self.controllers.items():
            controller.load_state_dict(state["categories"][name])


LAGRANGE_CONTROLLERS: dict[str, type[LagrangeController]] = {
    LogLambdaController.kind: LogLambdaController,
    PIDLagrangeController.kind: PIDLagrangeController,
    ConstantLagrange.kind: ConstantLagrange,
}


def make_lagrange_controller(kind: str, **kwargs: Any) -> LagrangeController:
    """Build the controller named ``kind`` ("log_lambda", "pid" or "constant") from kwargs."""
    try:
        controller_class = LAGRANGE_CONTROLLERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown Lagrange controller {kind!r}; choose one of {', '.join(LAGRANGE_CONTROLLERS)}"
        ) from None
    return controller_class(**kwargs)
