"""Build a Qwen2.5-shaped model offline: the real Qwen2 tokenizer, small random Qwen2 weights, the hub's layout.

    python -m tools.qwen_shaped --out /tmp/qwen25-shaped                  # 2 layers, hidden 256 (the tests' model)
    python -m tools.qwen_shaped --out /tmp/qwen25-0.5b --hidden 896 --intermediate 4864 --layers 24 --heads 14

No hub download: the llama-cpp-python sdist the Makefile keeps (.venv/sdist/) carries llama.cpp's test vocabulary
`vendor/llama.cpp/models/ggml-vocab-qwen2.gguf` (Qwen2's byte-level BPE, with llama.cpp's tokenizer test vectors
beside it) and `models/templates/Qwen-Qwen2.5-7B-Instruct.jinja` (the instruct model's chat template).
transformers reads the GGUF vocabulary once (~30-60 s; cached in <venv>/share/llama.cpp-<version>/), and the
tool lays the tokenizer out as the hub snapshot of Qwen/Qwen2.5-7B-Instruct does: tokenizer.json (NFC, Qwen's
pre-tokenizer regex, byte-level), vocab.json + merges.txt beside it, and tokenizer_config.json holding the chat
template and the 22 added tokens 151643-151664 (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, the vision, tool
and fill-in-the-middle markers). The embedding has 151,936 rows, more than the tokenizer's 151,665 ids, as on
the hub.

The weights are a random-initialised Qwen2ForCausalLM (seeded, so the files are byte-identical on every run)
in bf16, with tied embeddings (as Qwen2.5-0.5B/1.5B/3B), two eos ids in generation_config.json, and sharded over
two safetensors files with a model.safetensors.index.json. config.json and generation_config.json are written
in the hub's own form (`torch_dtype`, `rope_theta`), as a user's snapshot has them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ta.errors import MissingInputError, UserError, report

log = logging.getLogger("qwen_shaped")

VOCAB = "ggml-vocab-qwen2.gguf"
TEMPLATE = "Qwen-Qwen2.5-7B-Instruct.jinja"
SDIST_FILES = {  # path inside vendor/llama.cpp/ -> name in the cache
    f"models/{VOCAB}": VOCAB,
    f"models/{VOCAB}.inp": f"{VOCAB}.inp",
    f"models/{VOCAB}.out": f"{VOCAB}.out",
    f"models/templates/{TEMPLATE}": TEMPLATE,
}
GGUF_TOKENIZER = "gguf-tokenizer"  # what transformers made of the GGUF vocabulary, saved once
VOCAB_SIZE = 151936  # rows of the embedding (Qwen2.5-0.5B/1.5B/3B; 7B has 152064)
BASE_VOCAB = 151643  # byte-level BPE ids; the added tokens follow
ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
# Qwen2.5's added tokens after <|im_end|>, in id order from 151646: (text, special)
QWEN25_ADDED = [
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


@dataclass(frozen=True)
class Shape:
    hidden: int = 256
    intermediate: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    max_position_embeddings: int = 32768

    def check(self) -> None:
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise UserError("--heads must divide --hidden and --kv-heads must divide --heads")
        if self.hidden % 256 or self.intermediate % 256:
            log.warning(
                "hidden %d / intermediate %d: not multiples of 256; llama.cpp's q4_k_m will fall back to other types",
                self.hidden,
                self.intermediate,
            )


# ------------------------------------------------------------------------------------ the vocabulary


def default_sdist() -> Path:
    from ta.export.llama_cpp import installed_version

    return Path(sys.prefix) / "sdist" / f"llama_cpp_python-{installed_version()}.tar.gz"


def cache_dir() -> Path:
    from ta.export.llama_cpp import default_dir

    return default_dir() / "qwen2-vocab"


def vocab_files(sdist: Path | None = None, cache: Path | None = None) -> Path:
    """The directory holding the GGUF vocabulary, its test vectors and the template, extracted once."""
    cache = cache or cache_dir()
    if all((cache / name).is_file() for name in SDIST_FILES.values()):
        return cache
    sdist = sdist or default_sdist()
    if not sdist.is_file():
        raise MissingInputError(f"{sdist}: llama-cpp-python sdist not found; run `make install` or pass --sdist")
    cache.mkdir(parents=True, exist_ok=True)
    found = set()
    with tarfile.open(sdist) as tar:
        for member in tar:
            _, _, rest = member.name.partition("/vendor/llama.cpp/")
            if rest in SDIST_FILES and member.isfile():
                member.name = SDIST_FILES[rest]
                tar.extract(member, cache, filter="data")
                found.add(rest)
    if missing := sorted(set(SDIST_FILES) - found):
        raise MissingInputError(f"{sdist}: no vendor/llama.cpp/{missing[0]} inside")
    return cache


def gguf_tokenizer(vocab_dir: Path) -> Path:
    """transformers' reading of the GGUF vocabulary, saved beside it (the slow step, done once)."""
    saved = vocab_dir / GGUF_TOKENIZER
    if (saved / "tokenizer.json").is_file():
        return saved
    from transformers import AutoTokenizer

    log.info("reading %s with transformers (once, ~30-60 s)", vocab_dir / VOCAB)
    tokenizer = AutoTokenizer.from_pretrained(str(vocab_dir), gguf_file=VOCAB)
    with tempfile.TemporaryDirectory(dir=vocab_dir) as tmp:
        tokenizer.save_pretrained(tmp)
        shutil.move(tmp, saved)  # whole or not at all: a killed run leaves no half cache
    return saved


def test_vectors(vocab_dir: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors: (text, expected ids) — the format convert_hf_to_gguf_update.py writes."""
    texts = (vocab_dir / f"{VOCAB}.inp").read_bytes().decode("utf-8").split("\n__ggml_vocab_test__\n")
    lines = (vocab_dir / f"{VOCAB}.out").read_bytes().decode("utf-8").split("\n")
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts[:-1], lines, strict=False)]


def added_tokens() -> list[dict[str, Any]]:
    texts = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), *QWEN25_ADDED]
    return [
        {
            "id": BASE_VOCAB + i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": special,
        }
        for i, (text, special) in enumerate(texts)
    ]


def hub_tokenizer_json(gguf_json: dict[str, Any]) -> dict[str, Any]:
    """Qwen2.5's tokenizer.json from the GGUF's: the same BPE, Qwen's NFC normalizer and byte-level steps,
    the base vocabulary without the added tokens, which follow it as Qwen2.5 names them."""
    model = dict(gguf_json["model"])
    model["vocab"] = {token: i for token, i in model["vocab"].items() if i < BASE_VOCAB}
    model["ignore_merges"] = False
    pre = gguf_json["pre_tokenizer"]["pretokenizers"][0]  # Qwen's Split regex, as the GGUF records it
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens(),
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [pre, BYTE_LEVEL]},
        "post_processor": BYTE_LEVEL,
        "decoder": BYTE_LEVEL,
        "model": model,
    }


def tokenizer_config(chat_template: str) -> dict[str, Any]:
    """tokenizer_config.json as the hub snapshot of Qwen2.5-7B-Instruct has it (template inside)."""
    tokens = added_tokens()
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in tokens
        },
        "additional_special_tokens": [t["content"] for t in tokens[1:] if t["special"]],
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_tokenizer(vocab_dir: Path, out: Path) -> None:
    gguf_json = json.loads((gguf_tokenizer(vocab_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer_json = hub_tokenizer_json(gguf_json)
    model = tokenizer_json["model"]
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False, indent=2) + "\n", "utf-8")
    (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    template = (vocab_dir / TEMPLATE).read_text(encoding="utf-8")
    config = tokenizer_config(template)
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", "utf-8")


# ------------------------------------------------------------------------------------------ the weights


def hub_config(shape: Shape) -> dict[str, Any]:
    """config.json in the form Qwen's hub snapshots carry (written by transformers 4)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": ENDOFTEXT,
        "eos_token_id": IM_END,
        "hidden_act": "silu",
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate,
        "max_position_embeddings": shape.max_position_embeddings,
        "max_window_layers": shape.layers,
        "model_type": "qwen2",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": shape.max_position_embeddings,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB_SIZE,
    }


GENERATION_CONFIG = {
    "bos_token_id": ENDOFTEXT,
    "pad_token_id": ENDOFTEXT,
    "do_sample": True,
    "eos_token_id": [IM_END, ENDOFTEXT],
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "transformers_version": "4.37.0",
}


def write_weights(shape: Shape, seed: int, out: Path) -> None:
    """Random Qwen2 weights in bf16, split in two safetensors shards in state-dict order, with the index."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**hub_config(shape))).to(torch.bfloat16)
    tensors = {name: t.contiguous() for name, t in model.state_dict().items() if name != "lm_head.weight"}  # tied
    sizes = {name: t.numel() * t.element_size() for name, t in tensors.items()}
    total, running, first = sum(sizes.values()), 0, []
    for name in tensors:
        if first and running >= total / 2:
            break
        first.append(name)
        running += sizes[name]
    second = [name for name in tensors if name not in first]
    weight_map = {}
    for index, names in enumerate((first, second), start=1):
        file = f"model-{index:05d}-of-00002.safetensors"
        save_file({name: tensors[name] for name in names}, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    index_json = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n", encoding="utf-8")


def build(out: Path, shape: Shape = Shape(), seed: int = 0, sdist: Path | None = None) -> Path:
    """Write the Qwen2.5-shaped model into `out` (created; files of an earlier build are replaced)."""
    shape.check()
    vocab_dir = vocab_files(sdist)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(vocab_dir, out)
    write_weights(shape, seed, out)
    (out / "config.json").write_text(json.dumps(hub_config(shape), indent=2) + "\n", encoding="utf-8")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--hidden", type=int, default=Shape.hidden, help="hidden size (multiple of 256)")
    parser.add_argument("--intermediate", type=int, default=Shape.intermediate, help="MLP width (multiple of 256)")
    parser.add_argument("--layers", type=int, default=Shape.layers)
    parser.add_argument("--heads", type=int, default=Shape.heads, help="attention heads")
    parser.add_argument("--kv-heads", type=int, default=Shape.kv_heads, help="key/value heads (grouped-query)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random weights")
    parser.add_argument("--sdist", type=Path, help="llama-cpp-python sdist (default: <venv>/sdist/…tar.gz)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    def body() -> None:
        shape = Shape(args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads)
        build(args.out, shape, args.seed, args.sdist)
        print(args.out)

    return report("qwen_shaped", body)


if __name__ == "__main__":
    sys.exit(main())
