"""Loading and saving the models the stages pass along (ta/models.py): a saved adapter is byte-stable whatever
the interpreter's hash seed, tokenizer files travel as they are, the tokenizer is the one tokenizer.json
defines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ta import models
from tests.helpers import repo_env

# Two layers of q, k, v, o, gate, up and down projections: what "all-linear" expands to.
TINY_QWEN2 = dict(
    vocab_size=32,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
)
# One LoRA adapter over the tiny Qwen2, saved as PEFT writes it (argv[1]) and through save_model (argv[2]).
SAVE_BOTH_WAYS = f"""
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from ta.models import save_model

torch.manual_seed(0)
base = Qwen2ForCausalLM(Qwen2Config(**{TINY_QWEN2!r}))
model = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
model.save_pretrained(sys.argv[1])
save_model(model, Path(sys.argv[2]))
"""


def save_under_hash_seed(seed: int, out: Path) -> tuple[Path, Path]:
    """(PEFT's adapter dir, save_model's) from a new interpreter whose string hashes use `seed`."""
    peft_dir, ours_dir = out / f"peft-{seed}", out / f"ours-{seed}"
    cmd = [sys.executable, "-c", SAVE_BOTH_WAYS, str(peft_dir), str(ours_dir)]
    result = subprocess.run(cmd, env=repo_env(PYTHONHASHSEED=str(seed)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return peft_dir, ours_dir


def test_adapter_config_is_byte_identical_whatever_the_hash_seed(tmp_path: Path) -> None:
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    (peft_1, ours_1), (peft_2, ours_2) = save_under_hash_seed(1, tmp_path), save_under_hash_seed(2, tmp_path)
    peft_text = (peft_1 / "adapter_config.json").read_text()
    # Under these two seeds PEFT's own config files differ (the bug); the weights do not.
    assert peft_text != (peft_2 / "adapter_config.json").read_text()
    assert (peft_1 / "adapter_model.safetensors").read_bytes() == (peft_2 / "adapter_model.safetensors").read_bytes()

    ours_text = (ours_1 / "adapter_config.json").read_text()
    assert ours_text == (ours_2 / "adapter_config.json").read_text()
    modules = json.loads(peft_text)["target_modules"]
    assert len(modules) == 2 * 7
    assert json.loads(ours_text)["target_modules"] == sorted(modules)
    # Otherwise as PEFT wrote it: the same lines (a list item's comma aside), no newline added at the end.
    assert sorted(line.rstrip(",") for line in ours_text.splitlines()) == sorted(
        line.rstrip(",") for line in peft_text.splitlines()
    )
    assert ours_text.endswith("}") and peft_text.endswith("}")

    loaded = PeftModel.from_pretrained(Qwen2ForCausalLM(Qwen2Config(**TINY_QWEN2)), str(ours_1))
    assert loaded.peft_config["default"].target_modules == set(modules)
    saved, restored = load_file(str(ours_1 / "adapter_model.safetensors")), get_peft_model_state_dict(loaded)
    assert len(saved) == 2 * 2 * 7 and saved.keys() == restored.keys()
    assert all(torch.equal(saved[name], restored[name]) for name in saved)


def test_tokenizer_files_are_copied_as_they_are(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    config = '{"add_bos_token": false, "added_tokens_decoder": {"3": {"content": "<|im_end|>"}}}'
    (src / "tokenizer_config.json").write_text(config)
    (src / "tokenizer.model").write_bytes(b"\x00sentencepiece\xff")
    (src / "model.safetensors").write_bytes(b"weights")
    models.copy_tokenizer_files(src, tmp_path / "dst")
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    assert (tmp_path / "dst/tokenizer_config.json").read_text() == config
    assert (tmp_path / "dst/tokenizer.model").read_bytes() == b"\x00sentencepiece\xff"


def test_the_tokenizer_is_the_one_tokenizer_json_defines(tmp_path: Path) -> None:
    """A SentencePiece-style tokenizer.json in a dir whose config says qwen2: loaded as it is (transformers'
    AutoTokenizer would rebuild a byte-level Qwen2 tokenizer and change the ids)."""
    from tests.helpers import build_tokenizer

    tokenizer_dir = build_tokenizer("sentencepiece", tmp_path / "tok")
    (tokenizer_dir / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    from tokenizers import Tokenizer

    tokenizer = models.load_tokenizer(tokenizer_dir)
    text = "光合作用 is photosynthesis<|im_end|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "▁光合作用"


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")])
def test_precision_names_map_to_torch_dtypes(precision: str, dtype: str) -> None:
    import torch

    assert models.torch_dtype(precision) is getattr(torch, dtype)


def test_liger_kernels_need_the_package_then_a_cuda_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import types

    import torch

    from ta.errors import ParamsError

    models.check_liger_kernels("sft.liger_kernels", False)  # off: nothing is asked of the machine
    installed = importlib.util.find_spec("liger_kernel") is not None
    if not installed:
        with pytest.raises(ParamsError, match=r"^params.yaml: sft.liger_kernels: liger-kernel is not installed; "):
            models.check_liger_kernels("sft.liger_kernels", True)
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: types.SimpleNamespace() if name == "liger_kernel" else find_spec(name, *a),
        )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError, match=r"^params.yaml: dpo.liger_kernels: Liger's kernels run on CUDA GPUs"):
        models.check_liger_kernels("dpo.liger_kernels", True)


def test_liger_kernels_go_into_the_base_of_a_peft_model_and_leave_the_loss_to_trl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Liger cannot run here (Triton, CUDA): its entry point is replaced by one that records its arguments."""
    import types

    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.helpers import MICRO_QWEN2

    calls: list[dict] = []
    liger = types.ModuleType("liger_kernel.transformers")
    liger._apply_liger_kernel_to_instance = lambda **kwargs: calls.append(kwargs)
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", liger)

    base = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, **MICRO_QWEN2))
    models.apply_liger_kernels(get_peft_model(base, LoraConfig(r=2, target_modules="all-linear")))
    assert len(calls) == 1 and calls[0].pop("model") is base
    assert calls[0] == {
        "rope": True,
        "rms_norm": True,
        "swiglu": True,
        "cross_entropy": False,  # TRL's fused LM head computes the loss
        "fused_linear_cross_entropy": False,
    }
