"""merge (stages/merge.py, ta/export/merge.py): the merged weights are the base plus each adapter's B·A·scale,
and the merged dir carries what every runtime needs to stop at the end of the turn."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ta import chat
from ta.base_model import BaseModelRef
from ta.errors import MissingInputError
from ta.export.merge import merge
from tests.helpers import run_module


def expected_merge(base_file: Path, adapter_dir: Path) -> dict:
    """The merged state dict computed by hand from the files: W + (alpha / r) · B @ A for every adapted
    linear layer (rank_pattern and alpha_pattern honoured), every other tensor the base's own."""
    from safetensors.torch import load_file

    base, adapter = load_file(str(base_file)), load_file(str(adapter_dir / "adapter_model.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert not config.get("use_rslora") and not config.get("use_dora"), "scale below assumes plain LoRA"
    expected = {name: tensor.clone() for name, tensor in base.items()}
    for name, a in adapter.items():
        if ".lora_A." not in name:
            continue
        module = name.removeprefix("base_model.model.").split(".lora_A.")[0]
        b = adapter[name.replace(".lora_A.", ".lora_B.")]
        short = module.split(".")[-1]
        r = config.get("rank_pattern", {}).get(short, config["r"])
        alpha = config.get("alpha_pattern", {}).get(short, config["lora_alpha"])
        expected[f"{module}.weight"] += (alpha / r) * (b.double() @ a.double()).to(base[f"{module}.weight"].dtype)
    return expected


def test_the_guides_merge_command_gives_base_plus_scaled_adapter(chain: SimpleNamespace, tmp_path: Path) -> None:
    """`python -m stages.merge --adapter models/sft --base models/base --output merged_model` (guide, 4.2)."""
    from safetensors.torch import load_file

    out = tmp_path / "merged_model"
    args = ("--adapter", "models/sft", "--base", "models/base", "--output", str(out))
    result = run_module("stages.merge", chain.repo, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    merged = load_file(str(out / "model.safetensors"))
    expected = expected_merge(chain.base / "model.safetensors", chain.sft)
    assert merged.keys() == expected.keys()
    adapted = [n for n in merged if n.endswith(("q_proj.weight", "down_proj.weight"))]
    assert adapted, "the adapter covers every linear layer"
    for name in merged:
        assert merged[name].dtype == expected[name].dtype
        assert (merged[name] - expected[name]).abs().max() < 1e-5, name
    # not a copy of the base: the adapter did change the weights it covers
    base = load_file(str(chain.base / "model.safetensors"))
    assert any((merged[n] - base[n]).abs().max() > 1e-4 for n in adapted)
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()


def test_merged_generation_config_stops_at_the_chat_end_token(chain: SimpleNamespace) -> None:
    from ta.models import load_tokenizer

    tokenizer = load_tokenizer(chain.merged)
    generation = json.loads((chain.merged / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == tokenizer.convert_tokens_to_ids(chat.IM_END)
    assert tokenizer.convert_tokens_to_ids(chat.END_OF_TEXT) in generation["eos_token_id"]
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    assert (chain.merged / "model.safetensors").is_file() and not list(chain.merged.glob("*.bin"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_merged_dtype_is_the_one_asked_for(chain: SimpleNamespace, tmp_path: Path, dtype: str) -> None:
    import torch
    from safetensors.torch import load_file

    merge(BaseModelRef(str(chain.base), None, False), chain.dpo, tmp_path / "out", dtype)
    merged = load_file(str(tmp_path / "out/model.safetensors"))
    assert {t.dtype for t in merged.values()} == {getattr(torch, dtype)}
    reference = expected_merge(chain.base / "model.safetensors", chain.dpo)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(merged[name].float(), reference[name], atol=2e-2)  # folded in fp32, then cast


def test_merge_refuses_a_dir_that_is_neither_adapter_nor_model(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"neither a PEFT adapter \(adapter_config.json\) nor a model"):
        merge(BaseModelRef("unused", None, False), tmp_path, tmp_path / "out", "float32")
    assert not (tmp_path / "out").exists()


def test_a_base_that_cannot_be_loaded_is_one_line(tmp_path: Path, chain: SimpleNamespace) -> None:
    result = run_module("stages.merge", tmp_path, "--adapter", str(chain.dpo), "--base", str(tmp_path / "no-model"))
    assert result.returncode == 2
    # libraries may warn first (bitsandbytes on a CPU without its optional kernels); the error is the last line
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"merge: error: {tmp_path / 'no-model'}: cannot load the base model"), result.stderr
