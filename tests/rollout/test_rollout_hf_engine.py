"""HFEngine on the tiny Llama (float32): log-probs, stopping, seeds and weight sync."""

from __future__ import annotations

import pytest
import torch

from rayrlhf.models import load_causal_lm
from rayrlhf.models.tiny import TinyLlamaSpec, build_tiny_llama
from rayrlhf.rollout import HFEngine, RolloutEngine, SamplingSpec
from rayrlhf.rollout.weight_sync import pack_buckets

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [20]]  # ragged: exercises left padding


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> str:
    """Same architecture and tokenizer as the tiny model, different random weights."""
    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny-seed1") / "model", TinyLlamaSpec(seed=1)))


@torch.no_grad()
def reference_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log_softmax of an unpadded single-row forward pass, read at the response tokens."""
    logits = model(torch.tensor([prompt + response])).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return logprobs[torch.arange(len(response)), torch.tensor(response)]


def test_both_engines_satisfy_the_protocol(tiny_model_dir):
    from rayrlhf.rollout.vllm_engine import VLLMEngine  # importing it must not import vLLM itself

    assert isinstance(HFEngine(tiny_model_dir), RolloutEngine)
    assert issubclass(VLLMEngine, RolloutEngine)


@pytest.mark.parametrize("alias", ["tiny-llama", "tiny-llama-pad-eos"])
def test_logprobs_equal_an_unpadded_forward_pass(alias):
    from rayrlhf.models import resolve_model_path

    path = resolve_model_path(alias)
    engine = HFEngine(path, batch_size=3)  # 4 prompts -> two batches
    reference = load_causal_lm(path, dtype="float32").eval()
    spec = SamplingSpec(max_new_tokens=10, temperature=1.3, top_p=0.9, seed=3)
    completions = engine.generate(PROMPTS, spec)
    assert [c.prompt_ids for c in completions] == PROMPTS
    for c in completions:
        assert 1 <= len(c.response_ids) == len(c.response_logprobs) <= 10
        expected = reference_logprobs(reference, c.prompt_ids, c.response_ids)
        torch.testing.assert_close(torch.tensor(c.response_logprobs), expected, atol=1e-4, rtol=0)


def test_stops_at_a_stop_token_and_keeps_it(tiny_model_dir):
    spec = SamplingSpec(max_new_tokens=12, seed=7)
    free = HFEngine(tiny_model_dir).generate(PROMPTS, spec)
    first = free[0].response_ids
    stop = next(t for i, t in enumerate(first) if i >= 3 and t not in first[:i])  # first seen at i >= 3
    stopped = HFEngine(tiny_model_dir, stop_token_ids=[stop]).generate(PROMPTS, spec)
    for unstopped, c in zip(free, stopped):
        ids = unstopped.response_ids
        if stop in ids:  # same seed, same draws: the response is the free one, cut after the stop
            assert c.response_ids == ids[:ids.index(stop) + 1] and c.finished
        else:  # ran to the length limit: no padding tail, not finished
            assert c.response_ids == ids and len(ids) == 12 and not c.finished
    assert stopped[0].response_ids[-1] == stop and len(stopped[0].response_ids) >= 4
    assert all(not c.finished and len(c.response_ids) == 12 for c in free if stop not in c.response_ids)
    # a batch mixing early-stopped and full-length rows still scores correctly
    reference = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    for c in stopped:
        expected = reference_logprobs(reference, c.prompt_ids, c.response_ids)
        torch.testing.assert_close(torch.tensor(c.response_logprobs), expected, atol=1e-4, rtol=0)


def test_the_model_eos_ends_a_response(tiny_model_dir):
    """Point EOS's output embedding at prompt 0's last hidden state: EOS gets logit 20 there
    (others stay near 0), so that row must stop at once, keep EOS, and count as finished."""
    engine = HFEngine(tiny_model_dir)
    eos = engine.tokenizer.eos_token_id
    assert eos in engine.stop_ids
    with torch.no_grad():
        hidden = engine.model(torch.tensor([PROMPTS[0]]), output_hidden_states=True).hidden_states[-1][0, -1]
        engine.model.lm_head.weight[eos] = hidden * (20.0 / hidden.dot(hidden))  # tied with embed_tokens
    completions = engine.generate(PROMPTS, SamplingSpec(max_new_tokens=6, temperature=0))
    assert completions[0].response_ids == [eos] and completions[0].finished
    for c in completions:
        assert c.finished == (eos in c.response_ids)
        assert eos not in c.response_ids[:-1]  # nothing after EOS, not even padding
        assert c.finished or len(c.response_ids) == 6


def test_a_seed_reproduces_a_batch_and_another_seed_changes_it(tiny_model_dir):
    engine = HFEngine(tiny_model_dir)
    spec = SamplingSpec(max_new_tokens=8, seed=11)
    first = engine.generate(PROMPTS, spec)
    again = engine.generate(PROMPTS, spec)
    other = engine.generate(PROMPTS, SamplingSpec(max_new_tokens=8, seed=12))
    assert [c.response_ids for c in first] == [c.response_ids for c in again]
    assert [c.response_ids for c in first] != [c.response_ids for c in other]
    greedy = SamplingSpec(max_new_tokens=8, temperature=0)
    assert [c.response_ids for c in engine.generate(PROMPTS, greedy)] == \
        [c.response_ids for c in engine.generate(PROMPTS, greedy)]


def test_update_weights_makes_the_engine_score_like_the_new_model(tiny_model_dir, other_model_dir):
    engine = HFEngine(tiny_model_dir)
    old = load_causal_lm(tiny_model_dir, dtype="float32").eval()
    new = load_causal_lm(other_model_dir, dtype="float32").eval()
    # As the sync sends them: streamed out of small buckets, the tied head left out (sent once).
    buckets = list(pack_buckets(new.state_dict().items(), bucket_bytes=50_000))
    assert len(buckets) > 3 and "lm_head.weight" not in {name for bucket in buckets for name in bucket}
    engine.update_weights(pair for bucket in buckets for pair in bucket.items())
    completions = engine.generate(PROMPTS, SamplingSpec(max_new_tokens=8, seed=5))
    got = torch.cat([torch.tensor(c.response_logprobs) for c in completions])
    want_new = torch.cat([reference_logprobs(new, c.prompt_ids, c.response_ids) for c in completions])
    want_old = torch.cat([reference_logprobs(old, c.prompt_ids, c.response_ids) for c in completions])
    torch.testing.assert_close(got, want_new, atol=1e-4, rtol=0)
    assert (got - want_old).abs().mean() > 1e-2


def test_update_weights_rejects_tensors_that_do_not_fit(tiny_model_dir):
    engine = HFEngine(tiny_model_dir)
    state = engine.model.state_dict()
    with pytest.raises(KeyError, match="missing"):
        engine.update_weights({k: v for k, v in state.items() if "norm" not in k})
    with pytest.raises(KeyError, match="unexpected"):
        engine.update_weights({**state, "model.extra.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"model.norm.weight \(3,\) != \(128,\)"):
        engine.update_weights({**state, "model.norm.weight": torch.zeros(3)})


def test_a_partial_update_loads_what_it_is_given_and_keeps_the_rest(tiny_model_dir, other_model_dir):
    """A LoRA sync sends the adapted layers only (``partial``): those are replaced, the rest
    stay the engine's own; a tensor that fits nothing is still an error."""
    engine = HFEngine(tiny_model_dir)
    kept = {name: tensor.clone() for name, tensor in engine.model.state_dict().items()}
    new = load_causal_lm(other_model_dir, dtype="float32").state_dict()
    sent = {name: tensor for name, tensor in new.items() if "q_proj" in name}
    engine.update_weights(sent, partial=True)
    now = engine.model.state_dict()
    assert sent and all(torch.equal(now[name], sent[name]) for name in sent)
    assert all(torch.equal(now[name], kept[name]) for name in kept if name not in sent)
    with pytest.raises(KeyError, match="unexpected"):
        engine.update_weights({"model.extra.weight": torch.zeros(1)}, partial=True)


def test_prefill_groups_keep_each_generate_within_the_budget():
    from rayrlhf.rollout.vllm_engine import prefill_groups

    assert prefill_groups([40, 30, 50, 10, 90, 5], 100) == [[0, 1], [2, 3], [4, 5]]
    assert prefill_groups([150, 20], 100) == [[0], [1]]  # too long alone: its own group
    assert prefill_groups([], 100) == []
    lengths = [37, 81, 12, 64, 99, 3, 50]
    groups = prefill_groups(lengths, 128)
    assert [i for g in groups for i in g] == list(range(len(lengths)))  # order kept, none lost
    assert all(sum(lengths[i] for i in g) <= 128 for g in groups)
