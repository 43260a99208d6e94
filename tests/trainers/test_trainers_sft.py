"""Supervised fine-tuning: which tokens the loss sees, and a real 2-worker Ray Train run.

The SFT set is built here so the answer is known: every answer is the same sentence, which
the tiny random model cannot predict at first and can learn in a few steps, so a working
trainer must drive the held-out answer loss far down.
"""

from __future__ import annotations

import json

import pytest
import torch

from rayrlhf.config import compose_config
from rayrlhf.data import SFTRow
from rayrlhf.models import load_tokenizer
from rayrlhf.trainers import sft_trainer
from rayrlhf.trainers.sft_trainer import encode_sft, response_mask_from_offsets

ANSWER = "Sure, here is a kind and helpful answer."


# ---------------------------------------------------------------- the response mask
def test_mask_from_offsets_by_hand():
    # Prompt text is 10 characters. Tokens: [0,4) [4,10) prompt; [8,12) straddles the boundary
    # (starts in the prompt: not learned); [10,13) and [13,20) are the answer.
    offsets = [(0, 4), (4, 10), (8, 12), (10, 13), (13, 20)]
    assert response_mask_from_offsets(offsets, 10) == [0, 0, 0, 1, 1]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama", padding_side="right")


def test_chat_template_mask_counts_exactly_the_answer_tokens(tok):
    # ChatML: <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n | Hello friend<|im_end|>\n
    batch = encode_sft(tok, ["Hi there", "Yo"], ["Hello friend", "Hey"], "chat", max_length=64)
    for row, answer in enumerate(["Hello friend", "Hey"]):
        n = int(batch.attention_mask[row].sum())
        ids, mask = batch.input_ids[row, :n].tolist(), batch.response_mask[row, :n].tolist()
        first = mask.index(1)
        # The mask is 0...0 1...1 on real tokens and 0 on padding.
        assert mask == [0] * first + [1] * (n - first)
        assert batch.response_mask[row, n:].sum() == 0
        # Before it: the whole prompt, ending where generation starts; after it: the answer
        # with its end-of-turn token (so the policy learns to stop), nothing of the prompt.
        assert tok.decode(ids[:first]) == tok.apply_chat_template(
            [{"role": "user", "content": ["Hi there", "Yo"][row]}], tokenize=False, add_generation_prompt=True)
        assert tok.decode(ids[first:]) == f"{answer}<|im_end|>\n"
    # Row 1 is shorter: padded with pad ids, attention 0 there.
    n1 = int(batch.attention_mask[1].sum())
    assert (batch.input_ids[1, n1:] == tok.pad_token_id).all()


def test_safe_rlhf_template_mask_and_truncation(tok):
    batch = encode_sft(tok, ["Name a fruit."], ["Apple."], "safe_rlhf", max_length=64)
    ids, mask = batch.input_ids[0].tolist(), batch.response_mask[0].tolist()
    first = mask.index(1)
    assert tok.decode(ids[:first]) == "BEGINNING OF CONVERSATION: USER: Name a fruit. ASSISTANT:"
    assert tok.decode(ids[first:]) == f" Apple.{tok.eos_token}"  # EOS ends the answer, as the judges read it
    # max_length keeps the prompt and the start of the answer.
    short = encode_sft(tok, ["Name a fruit."], ["Apple."], "safe_rlhf", max_length=first + 1)
    assert short.input_ids[0].tolist() == ids[:first + 1]
    assert short.response_mask[0].tolist() == [0] * first + [1]


def test_sft_rows_use_instruction_and_input_as_the_prompt(tok):
    row = SFTRow(instruction="Translate.", input="hola", output="hello")
    batch = encode_sft(tok, [row.prompt], [row.output], "chat", max_length=64)
    first = batch.response_mask[0].tolist().index(1)
    assert "Translate.\n\nhola" in tok.decode(batch.input_ids[0, :first].tolist())


def test_wrong_schema_is_refused(tmp_path):
    cfg = compose_config("train_sft", ["model=tiny-llama", "dataset=demo_prompts"], output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="train-sft trains on 'sft' rows.*'prompt'"):
        sft_trainer.run(cfg)


# ---------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            f.write(json.dumps({"instruction": f"Please help me with question {i}.", "output": ANSWER}) + "\n")
    return path


STEPS = ["model=tiny-llama", "training.num_workers=2", "training.per_device_batch_size=2", "training.epochs=3",
         "training.lr=3e-3", "training.lr_scheduler=constant", "training.warmup_ratio=0.0",
         "training.eval_every=12", "training.save_every=12", "training.log_every=6", "training.max_length=64",
         "training.bf16=false", "eval_fraction=0.2"]


def train_sft(data, out, *extra):
    cfg = compose_config("train_sft", [*STEPS, f"dataset.source={data}", *extra], output_dir=str(out))
    return sft_trainer.run(cfg), cfg


@pytest.fixture(scope="module")
def sft_run(ray_cluster, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    metrics, cfg = train_sft(sft_data, out)
    return out, metrics, cfg


@pytest.mark.slow
@pytest.mark.e2e
def test_sft_run_learns_and_saves_a_plain_transformers_policy(sft_run, sft_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrlhf.data import load_rows
    from rayrlhf.trainers.checkpoint_dir import latest_checkpoint
    from rayrlhf.trainers.ray_train import split_train_eval
    from rayrlhf.trainers.sft_trainer import batch_loss

    out, metrics, cfg = sft_run
    assert metrics["step"] == 24  # 32 training rows // (2 per worker x 2 workers) = 8 steps x 3 epochs
    print(f"SFT eval loss {metrics['eval/initial_loss']:.3f} -> {metrics['eval/loss']:.3f}, "
          f"perplexity {metrics['eval/initial_perplexity']:.1f} -> {metrics['eval/perplexity']:.2f}")
    assert metrics["eval/loss"] < 0.2 * metrics["eval/initial_loss"], metrics
    assert metrics["eval/perplexity"] == pytest.approx(torch.tensor(metrics["eval/loss"]).exp().item(), rel=1e-6)

    # The policy is a plain transformers directory (safetensors + tokenizer) ...
    model_dir = out / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer_config.json").is_file()
    saved = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="right")
    # ... holding the weights the workers had in memory at the end, which DeepSpeed wrote
    # into the last checkpoint (the module's own state dict).
    in_memory = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    module_state = torch.load(latest_checkpoint(out) / "deepspeed" / "mp_rank_00_model_states.pt",
                              weights_only=False)["module"]
    in_memory.load_state_dict(module_state)
    rows = load_rows(sft_data, "sft").rows
    _, held_out = split_train_eval(rows, cfg.eval_fraction, cfg.run.seed)
    batch = encode_sft(tok, [r.prompt for r in held_out], [r.output for r in held_out], "chat", 64)
    with torch.no_grad():
        a = saved(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        b = in_memory(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        # The held-out loss the workers reported, recomputed from the saved directory.
        loss, tokens = batch_loss(saved, batch)
    assert (a - b).abs().max().item() < 1e-4
    assert tokens == metrics["eval/tokens"]
    assert loss.item() == pytest.approx(metrics["eval/loss"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.e2e
def test_sft_resumed_from_a_checkpoint_ends_where_the_full_run_did(sft_run, sft_data, tmp_path):
    """A run killed after step 12 (only that checkpoint left) continues to the same end point."""
    import shutil

    out, full, _ = sft_run
    at_12 = [p.parent for p in out.glob("ray_train/**/trainer_state.json")
             if json.loads(p.read_text())["global_step"] == 12]
    assert len(at_12) == 1
    shutil.copytree(at_12[0], tmp_path / "killed" / "checkpoint")
    # Saving more often changes nothing the run computes; keep_last_checkpoints=1 leaves only
    # the newest of the saves at steps 18 and 24 on disk (Ray Train deletes the other).
    resumed, _ = train_sft(sft_data, tmp_path / "resumed", f"resume_from={tmp_path / 'killed'}",
                           "training.save_every=6", "training.keep_last_checkpoints=1")
    assert resumed["step"] == 24
    states = [json.loads(p.read_text())["global_step"] for p in (tmp_path / "resumed").rglob("trainer_state.json")]
    assert states == [24], states
    assert resumed["eval/initial_loss"] == full["eval/initial_loss"]  # carried through the checkpoint
    for key in ("eval/loss", "train/loss"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-4), key
