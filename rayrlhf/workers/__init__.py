"""Ray actors: each role of PPO-Lag (rollout, policy, critics, scorers) as a worker class."""
