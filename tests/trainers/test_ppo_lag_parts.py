"""Driver pieces without Ray: prompt order, typed batches, response log-probs and values."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException

from rayrlhf.cluster import required_cpus
from rayrlhf.config import compose_config, config_error_message, to_object
from rayrlhf.models import load_causal_lm, load_tokenizer
from rayrlhf.models.forward import response_logits, response_values, token_logprobs
from rayrlhf.models.score_model import ScoreModel
from rayrlhf.rewards import load_rule, make_scorer
from rayrlhf.rewards.synthetic import forbidden_excess, rewarded_share
from rayrlhf.trainers.ppo_lag import lagrange_from_config, prompt_order
from rayrlhf.types import build_rollout_batch


def test_prompt_order_covers_each_pass_and_depends_only_on_the_step():
    seen = [i for step in range(5) for i in prompt_order(20, 4, step, seed=1)]
    assert sorted(seen) == list(range(20))  # one pass = 5 steps, every prompt once
    assert prompt_order(20, 4, 5, seed=1) != prompt_order(20, 4, 0, seed=1)  # next pass reshuffled
    assert prompt_order(20, 4, 7, seed=1) == prompt_order(20, 4, 7, seed=1)
    assert len(prompt_order(3, 8, 0, seed=0)) == 8  # fewer prompts than a step: repeated


def test_build_rollout_batch_pads_prompts_left_and_responses_right():
    batch = build_rollout_batch([[5, 6, 7], [8]], [[9], [10, 11]], [True, False], pad_token_id=0,
                                rollout_logprobs=[[-0.5], [-1.0, -2.0]])
    assert batch.prompt_length == 3
    assert batch.sequences.tolist() == [[5, 6, 7, 9, 0], [0, 0, 8, 10, 11]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert batch.response_mask.tolist() == [[1, 0], [1, 1]]
    assert batch.rollout_logprobs.tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
    assert batch.finished.tolist() == [True, False]
    halves = batch.split(2)
    assert [len(h) for h in halves] == [1, 1] and halves[1].sequences.tolist() == [[0, 0, 8, 10, 11]]
    with pytest.raises(ValueError, match="empty responses"):
        build_rollout_batch([[1]], [[]], [True], 0)


def test_minibatches_partition_rows():
    batch = build_rollout_batch([[1]] * 5, [[2, 3]] * 5, [True] * 5, 0)
    batch.advantages = torch.arange(10.0).reshape(5, 2)
    parts = batch.minibatches(2, torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [2, 2, 1]
    rows = sorted(r for p in parts for r in p.advantages[:, 0].tolist())
    assert rows == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_response_logprobs_match_an_unpadded_forward_pass(tiny_model_dir):
    """Left-padded prompts + right-padded responses give each row's own log-probs."""
    model = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    tok = load_tokenizer(tiny_model_dir)
    prompts = [tok("The capital of France")["input_ids"], tok("Hi")["input_ids"]]
    responses = [[40, 41, 42], [50, 51]]
    batch = build_rollout_batch(prompts, responses, [False, False], tok.pad_token_id)
    with torch.no_grad():
        logp = token_logprobs(response_logits(model, batch.sequences, batch.attention_mask,
                                              batch.prompt_length), batch.response_ids)
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            ids = torch.tensor([prompt + response])
            logits = model(ids).logits[0, len(prompt) - 1:-1]
            expected = torch.log_softmax(logits, -1)[torch.arange(len(response)), torch.tensor(response)]
            torch.testing.assert_close(logp[row, :len(response)], expected, atol=1e-5, rtol=1e-5)


def test_critic_values_are_read_before_each_response_token(tiny_model_dir):
    critic = ScoreModel.from_pretrained(tiny_model_dir, kind="critic", dtype="float32").eval()
    batch = build_rollout_batch([[5, 6, 7]], [[9, 10]], [True], pad_token_id=0)
    with torch.no_grad():
        values = response_values(critic, batch.sequences, batch.attention_mask, batch.prompt_length)
        all_scores = critic(batch.sequences, batch.attention_mask).scores[0, :, 0]
    # V(s_0) is read at the last prompt token, V(s_1) at the first response token.
    torch.testing.assert_close(values[0], all_scores[2:4])


def test_synthetic_rules_and_rule_sources():
    ids = [[0, 1, 2, 3, 4], [1, 5, 9, 13]]  # remainders mod 4: 0 1 2 3 0 ; 1 1 1 1
    assert rewarded_share(None, None, ids) == [3 / 5, 1.0]
    assert forbidden_excess(None, None, ids) == pytest.approx([1 / 5 - 0.2, 1.0 - 0.2])
    score = make_scorer("rule:rayrlhf.rewards.synthetic:forbidden_excess")
    assert score(["p", "p"], ["a", "b"], ids).tolist() == pytest.approx([0.0, 0.8])
    with pytest.raises(ValueError, match="has no function"):
        load_rule("rule:rayrlhf.rewards.synthetic:nope")
    with pytest.raises(ValueError, match="rule:<module>:<function>"):
        load_rule("rule:just_a_module")


def test_ppo_lag_config_maps_to_controllers_and_resources():
    cfg = compose_config("ppo_lag", ["+experiment=synthetic"], output_dir="/tmp/o")
    obj = to_object(cfg)
    assert obj.policy.name_or_path == "tiny-llama" and obj.reward.startswith("rule:")
    assert lagrange_from_config(cfg.lagrange).value == pytest.approx(0.5)
    constant = compose_config("ppo_lag", ["+experiment=synthetic", "lagrange=constant",
                                          "lagrange.value=2.5"], output_dir="/tmp/o")
    assert lagrange_from_config(constant.lagrange).update(10.0) == 2.5
    assert lagrange_from_config(to_object(constant).lagrange).value == 2.5  # the typed node too
    # policy 1 + two critics 2 + the colocated frozen actor 0.5 + one engine 1 = 4.5 CPUs;
    # with one actor per frozen model (3 x 0.5) it is 5.5
    assert required_cpus(cfg) == pytest.approx(4.5)
    separate = compose_config("ppo_lag", ["+experiment=synthetic", "resources.colocate_frozen=false"],
                              output_dir="/tmp/o")
    assert required_cpus(separate) == pytest.approx(5.5)
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("ppo_lag", ["+experiment=synthetic", "lagrange=bang"], output_dir="/tmp/o")
    message = config_error_message(info.value)
    assert "lagrange/bang" in message and all(option in message for option in ("log_lambda", "pid", "constant"))
    # A _target_ that is no controller is refused even where the config checks were skipped.
    other = compose_config("ppo_lag", ["+experiment=synthetic", "lagrange._target_=collections.OrderedDict"],
                           output_dir="/tmp/o")
    with pytest.raises(TypeError, match="collections.OrderedDict' is not a Lagrange controller"):
        lagrange_from_config(other.lagrange)
