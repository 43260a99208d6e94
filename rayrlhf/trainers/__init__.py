"""Training loops: score models (reward, cost, moderation) and, next, PPO-Lag."""
