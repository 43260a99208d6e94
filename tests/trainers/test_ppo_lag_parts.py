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
from rayrlhf.types import build_rollout_batch, pad_responses


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


def test_trimmed_micro_batches_drop_only_columns_no_row_needs():
    # Prompts of 3, 1 and 2 tokens, responses of 1, 2 and 1 tokens: P = 3, R = 2.
    batch = build_rollout_batch([[5, 6, 7], [8], [3, 4]], [[9], [10, 11], [12]], [True, False, True],
                                pad_token_id=0, rollout_logprobs=[[-0.5], [-1.0, -2.0], [-3.0]])
    # Shortest rows first (real lengths 4, 3, 3; ties keep their order): [1, 2], then [0].
    assert [g.tolist() for g in batch.length_groups(2)] == [[1, 2], [0]]
    short = batch.select([1, 2]).trimmed()
    # The first prompt column is padding in both rows; the second response column is not.
    assert short.prompt_length == 2
    assert short.sequences.tolist() == [[0, 8, 10, 11], [3, 4, 12, 0]]
    assert short.attention_mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 0]]
    assert short.rollout_logprobs.tolist() == [[-1.0, -2.0], [-3.0, 0.0]]
    alone = batch.select([2]).trimmed()  # one row: no padding left at all
    assert alone.sequences.tolist() == [[3, 4, 12]] and alone.prompt_length == 2
    assert alone.response_mask.tolist() == [[1]] and alone.rollout_logprobs.tolist() == [[-3.0]]
    assert pad_responses(alone.rollout_logprobs, 2).tolist() == [[-3.0, 0.0]]


def test_micro_batched_logprobs_and_values_equal_one_padded_pass(tiny_model_dir):
    """Length-sorted, trimmed micro-batches give every row the numbers the whole padded batch
    gives it (positions follow the mask, so trimming moves nothing)."""
    from rayrlhf.models.forward import rollout_logprobs, rollout_values

    model = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    critic = ScoreModel.from_pretrained(tiny_model_dir, kind="critic", dtype="float32").eval()
    prompts = [[5, 6, 7, 8, 9], [10], [11, 12], [13, 14, 15], [16]]
    responses = [[20, 21], [22, 23, 24, 25], [26], [27, 28, 29], [30]]
    batch = build_rollout_batch(prompts, responses, [True] * 5, pad_token_id=0)
    with torch.no_grad():
        whole = token_logprobs(response_logits(model, batch.sequences, batch.attention_mask, batch.prompt_length),
                               batch.response_ids) * batch.response_mask
        whole_values = response_values(critic, batch.sequences, batch.attention_mask, batch.prompt_length)
    for micro in (1, 2, 5):
        torch.testing.assert_close(rollout_logprobs(model, batch, micro), whole, atol=1e-5, rtol=1e-5)
        values = rollout_values(critic, batch, micro)
        torch.testing.assert_close(values, whole_values * batch.response_mask.unsqueeze(-1), atol=1e-5, rtol=1e-5)


def test_critic_values_are_read_before_each_response_token(tiny_model_dir):
    critic = ScoreModel.from_pretrained(tiny_model_dir, kind="critic", dtype="float32").eval()
    batch = build_rollout_batch([[5, 6, 7]], [[9, 10]], [True], pad_token_id=0)
    with torch.no_grad():
        values = response_values(critic, batch.sequences, batch.attention_mask, batch.prompt_length)
        all_scores = critic(batch.sequences, batch.attention_mask).scores[0, :, 0]
    # V(s_0) is read at the last prompt token, V(s_1) at the first response token.
    torch.testing.assert_close(values[0, :, 0], all_scores[2:4])


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
    # Default: policy 1 + one shared critic 1 + one engine 1 = 3 CPUs (the frozen models ride
    # in the trainers); two critics add 1; one frozen actor adds 0.5, one per model 3 x 0.5.
    assert required_cpus(cfg) == pytest.approx(3.0)
    layouts = {("ppo.critic_layout=separate",): 4.0, ("resources.frozen_placement=one_actor",): 3.5,
               ("resources.frozen_placement=own_actors", "ppo.critic_layout=separate"): 5.5}
    for overrides, cpus in layouts.items():
        other_layout = compose_config("ppo_lag", ["+experiment=synthetic", *overrides], output_dir="/tmp/o")
        assert required_cpus(other_layout) == pytest.approx(cpus), overrides
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("ppo_lag", ["+experiment=synthetic", "lagrange=bang"], output_dir="/tmp/o")
    message = config_error_message(info.value)
    assert "lagrange/bang" in message and all(option in message for option in ("log_lambda", "pid", "constant"))
    # A _target_ that is no controller is refused even where the config checks were skipped.
    other = compose_config("ppo_lag", ["+experiment=synthetic", "lagrange._target_=collections.OrderedDict"],
                           output_dir="/tmp/o")
    with pytest.raises(TypeError, match="collections.OrderedDict' is not a Lagrange controller"):
        lagrange_from_config(other.lagrange)


def test_engine_logprobs_are_checked_and_a_large_gap_switches_to_recompute():
    from rayrlhf.trainers.old_logprobs import OldLogprobSource

    # auto: the engine's exactly when both sides compute in one precision.
    choose = lambda setting, policy, engine: OldLogprobSource.choose(  # noqa: E731
        setting, policy, engine, tolerance=1e-3, check_every=3, check_rows=2).use_engine
    assert choose("auto", "float32", "float32") and choose("auto", "bfloat16", "bfloat16")
    assert not choose("auto", "bfloat16", "float32") and not choose("auto", "float32", None)
    assert choose("engine", "bfloat16", "float32") and not choose("recompute", "float32", "float32")
    with pytest.raises(ValueError, match="logprobs_source 'policy'"):
        choose("policy", "float32", "float32")
    source = OldLogprobSource.choose("auto", "float32", "float32", tolerance=1e-3, check_every=3, check_rows=2)
    # Checks at steps 0, 3, 6, ...; rows spread over the batch.
    assert [bool(source.rows_to_check(step, 8)) for step in range(5)] == [True, False, False, True, False]
    assert source.rows_to_check(0, 8) == [0, 4] and source.rows_to_check(0, 1) == [0]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    engine = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]])
    # Mean |Δ| over the 3 valid tokens: (1e-4 + 2e-4 + 3e-4) / 3 = 2e-4, within 1e-3.
    gap = source.record(0, engine, engine + torch.tensor([[1e-4, -2e-4, 9.0], [3e-4, 9.0, 9.0]]), mask)
    assert gap == pytest.approx(2e-4, rel=1e-4) and source.use_engine
    assert source.metrics(0) | {"rollout/logprobs_from_engine": 0.0} == {
        "rollout/logprob_gap": pytest.approx(2e-4, rel=1e-4), "rollout/logprob_gap_tolerance": 1e-3,
        "rollout/logprob_gap_measured": 1.0, "rollout/logprobs_from_engine": 0.0}
    assert source.metrics(1)["rollout/logprob_gap_measured"] == 0.0  # carried, not measured again
    # A stale engine (a failed weight sync): recompute from now on, no more checks.
    source.record(3, engine, engine - 0.5 * mask, mask)
    assert not source.use_engine and source.fell_back_at == 3 and source.rows_to_check(6, 8) == []
