"""Entry points of the ``rayrlhf`` stages: each ``run(cfg)`` takes a composed config.

Stages are thin: they turn config into calls on the library (data, models, trainers, eval)
and write their outputs under ``cfg.run.output_dir``.
"""
