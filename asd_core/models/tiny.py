"""Tiny random-weight models with tokenizers made offline, for tests and the smoke profile.

A source ``tiny:layers:2,hidden:64,seed:1,tokenizer:bytes`` names a deterministic model: the
same spec always gives the same weights and tokenizer, saved as an ordinary checkpoint folder so
every runtime that reads Hugging Face folders can load it. Weights are initialised with a large
spread so next-token distributions are peaked: greedy decoding of a near-uniform random model
would be decided by rounding noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asd_core.ground.errors import ConfigError
from asd_core.ground.files import atomic_dir

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A little text with code, digits, CJK and emoji, so trained merges cover the awkward cases.
_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The answer is 42. Question: what is 6 times 7?",
    "for i in range(10):\n        print(i * i)\n",
    "Hello world! Hello there, general Kenobi.",
    "数学 问题 答案 是 四十二。",
    "smile 😀 and rocket 🚀 ok",
    "A B C D: choose the correct option.",
] * 20


@dataclass(frozen=True)
class TinySpec:
    layers: int = 2
    hidden: int = 64
    heads: int = 2  # head_dim = hidden // heads must be >= 32 for vLLM
    seed: int = 0
    tokenizer: str = "bytes"  # "bytes": 256 byte tokens; "bpe": 512 with trained merges
    init_std: float = 0.5

    @classmethod
    def parse(cls, source: str) -> TinySpec:
        body = source.removeprefix("tiny:")
        kwargs: dict[str, object] = {}
        for item in filter(None, body.split(",")):
            key, sep, value = item.partition(":")  # not "=": papermill misparses such literals
            if not sep or key not in cls.__dataclass_fields__:
                raise ConfigError(
                    f"source '{source}': bad tiny-model field '{item}' (fields: layers, hidden, heads, seed, tokenizer, init_std)"
                )
            kwargs[key] = (
                value if key == "tokenizer" else (float(value) if key == "init_std" else int(value))
            )
        spec = cls(**kwargs)  # type: ignore[arg-type]
        if spec.tokenizer not in ("bytes", "bpe"):
            raise ConfigError(f"source '{source}': tokenizer must be 'bytes' or 'bpe'")
        if spec.hidden % spec.heads or spec.hidden // spec.heads < 32:
            raise ConfigError(f"source '{source}': hidden/heads must be a whole number >= 32")
        return spec

    @property
    def folder_name(self) -> str:
        return f"tiny-l{self.layers}-h{self.hidden}-a{self.heads}-s{self.seed}-{self.tokenizer}-i{self.init_std:g}"


def make_tokenizer(kind: str = "bytes"):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer built offline; ``bpe`` trains merges on a built-in corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab_size = len(alphabet) + len(SPECIALS) + (256 if kind == "bpe" else 0)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build(spec: TinySpec, out_dir: Path) -> None:
    """Write the tiny model + tokenizer described by ``spec`` into ``out_dir``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = make_tokenizer(spec.tokenizer)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=spec.hidden,
        intermediate_size=2 * spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=4096,
        initializer_range=spec.init_std,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))


def materialize(source: str, models_dir: str | Path) -> Path:
    """Folder holding the tiny model named by ``source``; built once, atomically."""
    spec = TinySpec.parse(source)
    final = Path(models_dir) / "tiny" / spec.folder_name
    if (final / "config.json").is_file():
        return final
    with atomic_dir(final) as tmp:
        build(spec, tmp)
    return final
