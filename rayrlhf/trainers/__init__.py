"""Training: the PPO-Lag driver (``ppo_lag``, with its roles, metrics log, resume and checkpoint
helpers) and the score-model and SFT trainers on the Ray Train loop they share (``ray_train``)."""
