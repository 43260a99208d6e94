"""Pure algorithm math of Safe RLHF / PPO-Lagrangian: tensors and numbers in and out."""

from rayrlhf.algorithms.advantages import PPOLagAdvantages, ppo_lag_advantages
from rayrlhf.algorithms.gae import gae_advantages
from rayrlhf.algorithms.kl import KL_ESTIMATORS, kl_estimate
from rayrlhf.algorithms.lagrange import (
    DEFAULT_LAMBDA_MAX,
    LAGRANGE_CONTROLLERS,
    ConstantLagrange,
    LagrangeController,
    LogLambdaController,
    PerCategoryLagrange,
    PIDLagrangeController,
    make_lagrange_controller,
)
from rayrlhf.algorithms.losses import (
    balanced_pos_weight,
    clipped_value_loss,
    combined_advantage,
    cost_pairwise_loss,
    entropy_from_logits,
    lm_loss,
    moderation_loss,
    ppo_actor_loss,
    response_nll,
    reward_pairwise_loss,
    token_logprobs_and_entropy,
)
from rayrlhf.algorithms.masked import (
    LOSS_AGGREGATIONS,
    aggregate_token_losses,
    aggregation_share,
    masked_count,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from rayrlhf.algorithms.rewards import constraint_costs, shape_rewards_and_costs
from rayrlhf.algorithms.schedules import LR_SCHEDULES, lr_multiplier

__all__ = [
    "balanced_pos_weight",
    "KL_ESTIMATORS",
    "DEFAULT_LAMBDA_MAX",
    "LAGRANGE_CONTROLLERS",
    "LR_SCHEDULES",
    "PPOLagAdvantages",
    "ConstantLagrange",
    "LagrangeController",
    "LogLambdaController",
    "PerCategoryLagrange",
    "PIDLagrangeController",
    "clipped_value_loss",
    "combined_advantage",
    "constraint_costs",
    "cost_pairwise_loss",
    "entropy_from_logits",
    "token_logprobs_and_entropy",
    "gae_advantages",
    "kl_estimate",
    "lm_loss",
    "lr_multiplier",
    "make_lagrange_controller",
    "LOSS_AGGREGATIONS",
    "aggregate_token_losses",
    "aggregation_share",
    "masked_count",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "moderation_loss",
    "ppo_actor_loss",
    "ppo_lag_advantages",
    "response_nll",
    "reward_pairwise_loss",
    "shape_rewards_and_costs",
]
