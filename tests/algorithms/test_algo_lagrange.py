"""λ controllers: hand-computed updates, delay, window, clamps, resume, and a closed loop."""

import json
import math

import pytest

from rayrlhf.algorithms import (
    DEFAULT_LAMBDA_MAX,
    ConstantLagrange,
    LagrangeController,
    LogLambdaController,
    PIDLagrangeController,
    make_lagrange_controller,
)


# --- log-λ (Safe RLHF) ---------------------------------------------------------------------
def test_log_lambda_three_hand_computed_steps():
    # d = 1, λ0 = 1 (ln λ = 0), α = 0.1;  ln λ ← ln λ + α·λ·(J_c − d)
    #   J = 2: ln λ = 0      + 0.1·1        ·( 1) = 0.1             λ = e^0.1    ≈ 1.10517  (rises)
    #   J = 3: ln λ = 0.1    + 0.1·1.10517  ·( 2) = 0.3210342       λ ≈ 1.37855             (rises)
    #   J = 0: ln λ = 0.3210342 + 0.1·1.37855·(−1) = 0.1831789      λ ≈ 1.20103             (falls)
    controller = LogLambdaController(threshold=1.0, lambda_init=1.0, lambda_lr=0.1)
    assert controller.value == 1.0
    assert controller.update(2.0) == pytest.approx(math.exp(0.1))
    assert controller.update(3.0) == pytest.approx(math.exp(0.1 + 0.1 * math.exp(0.1) * 2))
    assert controller.value == pytest.approx(1.3785527040)
    assert controller.update(0.0) == pytest.approx(1.2010292689)
    assert controller.log_lambda == pytest.approx(0.1831789132)


def test_log_lambda_uses_mean_of_episode_costs():
    from_list = LogLambdaController(threshold=1.0, lambda_init=1.0, lambda_lr=0.1)
    from_mean = LogLambdaController(threshold=1.0, lambda_init=1.0, lambda_lr=0.1)
    assert from_list.update([1.0, 3.0, 2.0]) == from_mean.update(2.0)


def test_log_lambda_window_averages_recent_calls():
    # window = 2, one number per call (each counts as one episode): J = mean of the last two.
    #   call 1: J = 2          → ln λ = 0.1·1·(2 − 1)          = 0.1
    #   call 2: J = (2 + 4)/2 = 3 → ln λ = 0.1 + 0.1·e^0.1·2
    #   call 3: J = (4 + 0)/2 = 2 → ln λ += 0.1·λ·1   (the cost 2 of call 1 has left the window)
    controller = LogLambdaController(threshold=1.0, lambda_init=1.0, lambda_lr=0.1, window=2)
    controller.update(2.0)
    controller.update(4.0)
    expected = 0.1 + 0.1 * math.exp(0.1) * 2
    assert controller.log_lambda == pytest.approx(expected)
    controller.update(0.0)
    expected += 0.1 * math.exp(expected) * 1.0
    assert controller.log_lambda == pytest.approx(expected)


def test_log_lambda_window_counts_episodes_across_rollouts():
    # window = 4 episodes. Rollout 1 has costs [1, 1, 1]: J = 1, ln λ = 0.1·1·(1 − 0) = 0.1.
    # Rollout 2 has [5, 5]: the window holds the last 4 episodes [1, 1, 5, 5], J = 3.
    controller = LogLambdaController(threshold=0.0, lambda_init=1.0, lambda_lr=0.1, window=4)
    controller.update([1.0, 1.0, 1.0])
    assert controller.log_lambda == pytest.approx(0.1)
    controller.update([5.0, 5.0])
    assert list(controller.recent_costs) == [1.0, 1.0, 5.0, 5.0]
    assert controller.log_lambda == pytest.approx(0.1 + 0.1 * math.exp(0.1) * 3.0)
    # window=None: only the current rollout counts (J = 5 here, not 3).
    this_rollout = LogLambdaController(threshold=0.0, lambda_init=1.0, lambda_lr=0.1)
    this_rollout.update([1.0, 1.0, 1.0])
    this_rollout.update([5.0, 5.0])
    assert this_rollout.log_lambda == pytest.approx(0.1 + 0.1 * math.exp(0.1) * 5.0)
    with pytest.raises(ValueError, match="window must be >= 1 episodes"):
        LogLambdaController(threshold=0.0, lambda_init=1.0, lambda_lr=0.1, window=0)


def test_log_lambda_delay_holds_lambda_but_records_costs():
    controller = LogLambdaController(
        threshold=1.0, lambda_init=0.5, lambda_lr=0.1, update_delay=2, window=3
    )
    assert controller.update(5.0) == 0.5
    assert controller.update(5.0) == 0.5
    # Third call: first real update; J = mean(5, 5, 2) = 4 uses the costs seen during the delay.
    assert controller.update(2.0) == pytest.approx(0.5 * math.exp(0.1 * 0.5 * 3.0))


def test_log_lambda_clamped_at_lambda_max():
    controller = LogLambdaController(threshold=0.0, lambda_init=1.0, lambda_lr=1.0, lambda_max=1.2)
    assert controller.update(10.0) == pytest.approx(1.2)
    assert controller.update(10.0) == pytest.approx(1.2)
    assert controller.update(-1.0) < 1.2  # falls again as soon as the cost is below d


def test_log_lambda_unreachable_threshold_caps_at_the_default_instead_of_overflowing():
    # Issue #15's sweep: d = -0.1 with costs that stay near 0 (J_c − d = 0.1), λ0 = 0.5, α = 5.
    # Uncapped, ln λ += 5·λ·0.1 grows super-exponentially (2.9e23 by step 5) and exp(ln λ)
    # overflows. Capped: λ climbs 0.5 → e^(ln 0.5 + 0.25) ... and then sits at 5.
    controller = LogLambdaController(threshold=-0.1, lambda_init=0.5, lambda_lr=5.0)
    assert controller.lambda_max == DEFAULT_LAMBDA_MAX == 5.0
    lambdas = [controller.update(0.0) for _ in range(40)]
    assert lambdas[0] == pytest.approx(0.5 * math.exp(5.0 * 0.5 * 0.1))  # by hand: 0.6420
    assert max(lambdas) == pytest.approx(5.0) and math.isfinite(controller.value)
    first_at_cap = next(i for i, lam in enumerate(lambdas) if lam == pytest.approx(5.0))
    assert all(lam == pytest.approx(5.0) for lam in lambdas[first_at_cap:])
    assert controller.at_cap_steps == 40 - first_at_cap
    # Once the cost falls below d, λ leaves the cap and the streak ends.
    assert controller.update(-1.0) < 5.0 and controller.at_cap_steps == 0


def test_at_cap_streak_survives_a_resume():
    first = LogLambdaController(threshold=0.0, lambda_init=1.0, lambda_lr=1.0, lambda_max=1.2)
    for _ in range(3):
        first.update(10.0)
    resumed = LogLambdaController(threshold=0.0, lambda_init=1.0, lambda_lr=1.0, lambda_max=1.2)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert resumed.at_cap_steps == 3
    resumed.update(10.0)
    assert resumed.at_cap_steps == 4


@pytest.mark.parametrize("cap", [None, float("inf"), 0.0, float("nan")])
def test_lambda_max_must_be_finite(cap):
    with pytest.raises(ValueError, match="positive finite"):
        LogLambdaController(threshold=0.0, lambda_init=1.0, lambda_lr=0.1, lambda_max=cap)
    with pytest.raises(ValueError, match="positive finite"):
        PIDLagrangeController(threshold=0.0, kp=1.0, ki=1.0, kd=0.0, lambda_max=cap)


def test_pid_caps_at_the_default_and_counts_the_streak():
    # Ki only, d = 0, J = 2 each step: I = 2k, λ = min(5, 2k) → 2, 4, 5, 5.
    controller = PIDLagrangeController(threshold=0.0, kp=0.0, ki=1.0, kd=0.0)
    assert [controller.update(2.0) for _ in range(4)] == [2.0, 4.0, 5.0, 5.0]
    assert controller.at_cap_steps == 2


def test_log_lambda_state_dict_round_trip_continues_identically():
    def build():
        return LogLambdaController(
            threshold=0.5, lambda_init=0.8, lambda_lr=0.3, lambda_max=5.0, update_delay=1, window=3
        )

    costs = [1.2, [0.9, 1.7], 0.1, 2.5, 0.4, 0.7, 1.1]
    uninterrupted = build()
    uninterrupted_values = [uninterrupted.update(c) for c in costs]

    first_half = build()
    for c in costs[:3]:
        first_half.update(c)
    resumed = build()
    resumed.load_state_dict(json.loads(json.dumps(first_half.state_dict())))
    resumed_values = [resumed.update(c) for c in costs[3:]]
    assert resumed_values == uninterrupted_values[3:]  # exact equality, not approx
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_log_lambda_rejects_bad_input():
    with pytest.raises(ValueError):
        LogLambdaController(threshold=0.0, lambda_init=0.0, lambda_lr=0.1)
    controller = LogLambdaController(threshold=0.0, lambda_init=1.0, lambda_lr=0.1)
    with pytest.raises(ValueError):
        controller.update([])
    with pytest.raises(ValueError):
        controller.update(float("nan"))
    with pytest.raises(ValueError, match="pid"):
        controller.load_state_dict(PIDLagrangeController(0.0, 1.0, 1.0, 1.0).state_dict())


def test_log_lambda_closed_loop_settles_at_the_threshold():
    # Toy cost process: the expected cost falls as λ grows, J_c(λ) = 2 / (1 + λ);
    # the constraint J_c = d = 0.5 holds at λ* = 3.
    controller = LogLambdaController(threshold=0.5, lambda_init=1.0, lambda_lr=0.2)
    lambdas = []
    for _ in range(150):
        lambdas.append(controller.update(2.0 / (1.0 + controller.value)))
    final_cost = 2.0 / (1.0 + lambdas[-1])
    assert final_cost == pytest.approx(0.5, abs=1e-3)
    assert abs(lambdas[-1] - lambdas[-11]) < 1e-3
    assert lambdas[-1] == pytest.approx(3.0, abs=1e-2)


# --- PID (Stooke et al. 2020) --------------------------------------------------------------
def test_pid_three_hand_computed_steps():
    # d = 1, Kp = 0.5, Ki = 0.1, Kd = 0.2; J_prev starts at 0.
    #   J = 3: e = 2,  I = 2, ∂ = max(0, 3 − 0) = 3 → λ = 1.0 + 0.2 + 0.6 = 1.8
    #   J = 2: e = 1,  I = 3, ∂ = max(0, 2 − 3) = 0 → λ = 0.5 + 0.3 + 0   = 0.8
    #   J = 0: e = −1, I = 2, ∂ = 0                → λ = max(0, −0.5 + 0.2) = 0
    controller = PIDLagrangeController(threshold=1.0, kp=0.5, ki=0.1, kd=0.2)
    assert controller.value == 0.0
    assert controller.update(3.0) == pytest.approx(1.8)
    assert controller.update(2.0) == pytest.approx(0.8)
    assert controller.update(0.0) == 0.0
    assert controller.integral == pytest.approx(2.0)


def test_pid_integral_anti_windup_at_zero():
    # Costs below d for a long time must not bank a negative integral.
    controller = PIDLagrangeController(threshold=1.0, kp=0.5, ki=0.1, kd=0.2)
    for _ in range(10):
        assert controller.update(0.0) == 0.0
    assert controller.integral == 0.0
    # J = 1.5: e = 0.5, I = 0.5 (not 0.5 − 10), ∂ = 1.5 − 0 = 1.5 → λ = 0.25 + 0.05 + 0.3 = 0.6
    assert controller.update(1.5) == pytest.approx(0.6)


def test_pid_integral_max_and_lambda_max():
    controller = PIDLagrangeController(
        threshold=0.0, kp=0.0, ki=1.0, kd=0.0, integral_max=2.5, lambda_max=2.0
    )
    controller.update(2.0)
    assert controller.value == pytest.approx(2.0)  # I = 2
    controller.update(2.0)
    assert controller.integral == pytest.approx(2.5)  # 4 clamped to 2.5
    assert controller.value == pytest.approx(2.0)  # 2.5 clamped to λ_max


def test_pid_derivative_ema():
    # Kd only, α = 0.5: J̃1 = 0.5·0 + 0.5·2 = 1 → ∂ = 1;  J̃2 = 0.5·1 + 0.5·2 = 1.5 → ∂ = 0.5
    controller = PIDLagrangeController(
        threshold=0.0, kp=0.0, ki=0.0, kd=1.0, derivative_ema_alpha=0.5
    )
    assert controller.update(2.0) == pytest.approx(1.0)
    assert controller.update(2.0) == pytest.approx(0.5)


def test_pid_state_dict_round_trip_continues_identically():
    def build():
        return PIDLagrangeController(
            threshold=0.3, kp=0.4, ki=0.2, kd=0.1, derivative_ema_alpha=0.3
        )

    costs = [0.9, 0.1, 0.6, [0.2, 0.8], 0.0, 1.4]
    uninterrupted = build()
    expected = [uninterrupted.update(c) for c in costs]
    first = build()
    for c in costs[:2]:
        first.update(c)
    resumed = build()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [resumed.update(c) for c in costs[2:]] == expected[2:]


def test_pid_closed_loop_settles_at_the_threshold():
    controller = PIDLagrangeController(threshold=0.5, kp=0.5, ki=0.5, kd=0.1)
    for _ in range(150):
        controller.update(2.0 / (1.0 + controller.value))
    assert 2.0 / (1.0 + controller.value) == pytest.approx(0.5, abs=1e-3)


# --- constant and factory ------------------------------------------------------------------
def test_constant_never_changes():
    controller = ConstantLagrange(0.7)
    for cost in (100.0, -100.0, [0.0, 1.0]):
        assert controller.update(cost) == 0.7
    restored = ConstantLagrange(0.0)
    restored.load_state_dict(json.loads(json.dumps(controller.state_dict())))
    assert restored.value == 0.7


@pytest.mark.parametrize(
    "kind, kwargs, expected_class",
    [
        (
            "log_lambda",
            {"threshold": 0.0, "lambda_init": 1.0, "lambda_lr": 0.1},
            LogLambdaController,
        ),
        ("pid", {"threshold": 0.0, "kp": 0.1, "ki": 0.1, "kd": 0.0}, PIDLagrangeController),
        ("constant", {"value": 2.0}, ConstantLagrange),
    ],
)
def test_factory_builds_each_kind(kind, kwargs, expected_class):
    controller = make_lagrange_controller(kind, **kwargs)
    assert isinstance(controller, expected_class)
    assert isinstance(controller, LagrangeController)
    assert controller.state_dict()["kind"] == kind


def test_factory_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="log_lambda, pid, constant"):
        make_lagrange_controller("dual_ascent")
