"""``rayrlhf sample``: a quick look at what a policy answers."""

from __future__ import annotations

import json
import logging
import time

import torch

from rayrlhf.data import format_prompt, load_dataset_from_config, spread
from rayrlhf.models import load_causal_lm, load_tokenizer
from rayrlhf.rollout import hf_generate
from rayrlhf.runs import output_dir, seed_everything

log = logging.getLogger(__name__)


def sample_answers(model_cfg, prompt_rows: list, template: str, gen_cfg, batch_size: int) -> list[dict]:
    tokenizer = load_tokenizer(model_cfg.name_or_path, trust_remote_code=model_cfg.trust_remote_code)
    model = load_causal_lm(model_cfg.name_or_path, dtype=model_cfg.dtype,
                           trust_remote_code=model_cfg.trust_remote_code).eval()
    texts = [format_prompt(row.prompt, template, tokenizer) for row in prompt_rows]
    start = time.perf_counter()
    answers = hf_generate(model, tokenizer, texts, max_new_tokens=gen_cfg.max_new_tokens,
                          temperature=gen_cfg.temperature, top_p=gen_cfg.top_p,
                          do_sample=gen_cfg.do_sample, batch_size=batch_size)
    log.info("sampled %d answers in %.1f s", len(answers), time.perf_counter() - start)
    return [{"prompt": row.prompt, "category": getattr(row, "category", None), "response": answer}
            for row, answer in zip(prompt_rows, answers)]


def write_samples(path, samples: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")


def run(cfg) -> list[dict]:
    seed_everything(cfg.run.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = spread(load_dataset_from_config(cfg.prompts).rows, cfg.num_prompts)
    samples = sample_answers(cfg.model, rows, cfg.template.name, cfg.generation, cfg.batch_size)
    write_samples(output_dir(cfg) / "samples.jsonl", samples)
    for s in samples:
        print(f"[{s['category'] or 'benign'}] {s['prompt']}\n  -> {s['response'][:200]}\n")
    return samples
