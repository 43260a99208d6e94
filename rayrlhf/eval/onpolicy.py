"""Judge data from the policy's own answers, labelled by the refusal rule.

Judges trained only on templated text ("Sure, here's how..." against "I can't help...")
learn the templates, not harm: they rate the real policy's compliant answers as safe, so the
cost constraint never binds. Before the judges train, the policy PPO-Lag will start from
answers the *training* prompts (never held-out ones), and each answer becomes preference
pairs in the PKU-SafeRLHF schema:

- harmful prompt: an answer that goes along with it is **unsafe**, a refusal is safe. It is
  paired with a refusal (one of the policy's own when it wrote one, else a written one);
  the compliant answer is the *more helpful* one and the refusal the *safer* one, the
  helpfulness/harmlessness split Safe RLHF is built on.
- benign prompt: each distinct (non-refusing) answer against a refusal, again the policy's own
  when it wrote one: the answer is more helpful, and both are safe; the answer counts as the
  safer of the two, since refusing a harmless request is not safer, only less useful (this
  keeps the cost model from rewarding refusal as such, which would teach over-refusal). The
  policy's own refusals matter most here: they are what PPO would drift to, and on harmful
  prompts the same wording is the safer answer. Every answer gives a row, not only the first:
  training prompts are mostly harmful, and a cost model that sees few safe compliant answers
  learns "goes along = unsafe" and penalises helpful answers to harmless requests.

The labels come from ``rayrlhf.eval.refusal``; a run that uses them says so in its report, since
that rule is then also the cost model's teacher.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from rayrlhf.eval.refusal import is_refusal

# Written refusals, varied so the judges cannot learn one sentence; picked by prompt hash.
REFUSALS = (
    "I can't help with that. It could hurt someone or break the law. If something is going on, I'm happy to "
    "talk through safer options.",
    "I'm sorry, but I won't help with this request, because it could cause real harm to people.",
    "I can't assist with that. If you tell me more about what you're trying to solve, I can suggest a safe "
    "and legal way forward.",
    "Sorry, I'm not able to help with that. Doing it could put you or others at risk.",
    "I won't provide that. It would be harmful and likely illegal, but I'd be glad to help with something else.",
)


def written_refusal(prompt: str) -> str:
    """A refusal for ``prompt`` from :data:`REFUSALS`, the same one every run."""
    index = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16) % len(REFUSALS)
    return REFUSALS[index]


def _pair(prompt: str, first: str, second: str, *, better: int, safer: int, first_safe: bool,
          second_safe: bool) -> dict[str, Any]:
    return {"prompt": prompt, "response_0": first, "response_1": second, "better_response_id": better,
            "safer_response_id": safer, "is_response_0_safe": first_safe, "is_response_1_safe": second_safe}


def preference_rows(prompts: Sequence[str], harmful: Sequence[bool],
                    answers: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Preference rows (``PreferenceRow`` dicts) from the policy's answers to each prompt.

    ``answers[i]`` holds the samples for ``prompts[i]``: one row per harmful prompt, one per
    distinct compliant answer to a benign prompt. A prompt whose answers all refuse gives no
    row (no contrast to learn from).
    """
    if not len(prompts) == len(harmful) == len(answers):
        raise ValueError(f"{len(prompts)} prompts, {len(harmful)} harm flags, {len(answers)} answer lists")
    rows = []
    for prompt, is_harmful, samples in zip(prompts, harmful, answers):
        samples = [s for s in samples if s.strip()]
        refusals = [s for s in samples if is_refusal(s)]
        compliant = [s for s in samples if not is_refusal(s)]
        if not compliant:
            continue
        refusal = refusals[0] if refusals else written_refusal(prompt)
        if is_harmful:
            rows.append(_pair(prompt, compliant[0], refusal, better=0, safer=1, first_safe=False, second_safe=True))
        else:
            for answer in dict.fromkeys(compliant):  # distinct, in sampling order
                rows.append(_pair(prompt, answer, refusal, better=0, safer=0, first_safe=True,
                                  second_safe=True))
    return rows
