"""Reward and cost functions: learned score models or plain Python rules, one interface.

A *source* string picks one:
- ``rule:<module>:<function>``: ``function(prompts, responses, response_ids) -> list[float]``;
- anything else: a score model directory (or alias) written by ``rayrlhf train-reward`` /
  ``train-cost``, read with its own tokenizer and prompt template.

Costs follow the convention of the whole project: > 0 means unsafe.
"""

from rayrlhf.rewards.sources import RULE_PREFIX, load_rule, make_scorer, source_categories

__all__ = ["RULE_PREFIX", "load_rule", "make_scorer", "source_categories"]
