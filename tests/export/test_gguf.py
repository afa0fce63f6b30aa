"""gguf (stages/gguf.py, ta/export/gguf.py): llama.cpp's converter, and parity checks that fail on exactly the
breakages they exist for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from ta import chat
from ta.config import load_params
from ta.export import gguf
from ta.export.gguf import ParityError
from tests.helpers import REPO

PARAMS = load_params(REPO / "params.yaml").gguf


def test_parity_passes_on_the_chains_files(chain: SimpleNamespace) -> None:
    result = gguf.check_parity(chain.merged, chain.f16, chain.sft_eval, PARAMS)
    assert result["token_parity"]["mismatches"] == 0 and result["token_parity"]["texts"] == PARAMS.parity_samples + 3
    assert result["logit_parity"]["max_abs_diff"] < PARAMS.logit_tolerance
    assert result["logit_parity"]["top1_agreement"] >= PARAMS.min_top1_agreement


def test_token_parity_fails_when_a_special_token_is_split(chain: SimpleNamespace, tmp_path: Path) -> None:
    broken = tmp_path / "merged"
    shutil.copytree(chain.merged, broken)
    tokenizer_json = json.loads((broken / "tokenizer.json").read_text())
    tokenizer_json["added_tokens"] = [t for t in tokenizer_json["added_tokens"] if t["content"] != chat.IM_END]
    (broken / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    config = json.loads((broken / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {
        k: v for k, v in config["added_tokens_decoder"].items() if v["content"] != chat.IM_END
    }
    config["eos_token"] = chat.END_OF_TEXT  # else transformers re-adds <|im_end|> as the eos special token
    (broken / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    with pytest.raises(ParityError, match=rf"{chain.f16.name}: tokenizer mismatch on \d+/\d+ probe texts; first: "):
        gguf.check_parity(broken, chain.f16, chain.sft_eval, PARAMS)


def test_parity_without_tokenizer_files_says_which_dir_lacks_them(chain: SimpleNamespace, tmp_path: Path) -> None:
    broken = tmp_path / "merged"
    shutil.copytree(chain.merged, broken)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        (broken / name).unlink(missing_ok=True)
    with pytest.raises(ParityError) as err:
        gguf.check_parity(broken, chain.f16, chain.sft_eval, PARAMS)
    assert str(err.value) == (
        f"{broken}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json); token parity needs the "
        "tokenizer the model was saved with (merge copies it beside the weights)"
    )


def test_logit_parity_fails_when_the_weights_differ(chain: SimpleNamespace, tmp_path: Path) -> None:
    """The same tokenizer, other weights (one matrix disturbed): token parity holds, logit parity must not."""
    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "merged"
    shutil.copytree(chain.merged, other)
    weights = load_file(str(other / "model.safetensors"))
    torch.manual_seed(0)
    weights["lm_head.weight"] = weights["lm_head.weight"] + 0.5 * torch.randn_like(weights["lm_head.weight"])
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    expected = rf"logits differ from {other}: max \|Δ\| [\d.]+ = [\d.]+ of the logits' spread [\d.]+ \(allowed [\d.]+: "
    with pytest.raises(ParityError, match=expected + "gguf.logit_tolerance"):
        gguf.check_parity(other, chain.f16, chain.sft_eval, PARAMS)


def test_a_converter_failure_names_the_model_and_shows_its_error(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model/config.json").write_text('{"architectures": ["NoSuchForCausalLM"]}')
    with pytest.raises(gguf.ExportError, match=rf"convert_hf_to_gguf.py failed on {tmp_path / 'model'} \(exit \d+\):"):
        gguf.convert(tmp_path / "model", tmp_path / "out.gguf", "f16", "")


def test_a_gguf_that_fails_parity_is_not_left_at_its_final_path(narrow_workspace: Path, tmp_path: Path) -> None:
    """The stage as DVC runs it: with the shipped tolerance the file passes and lands at its final path; with
    a tolerance no f16 file can meet it fails, and neither it nor its temp file is left (the one from the
    run before stays: the old complete output)."""
    from tests.helpers import run_module, write_params

    work = shutil.copytree(narrow_workspace, tmp_path / "work")
    final = work / "models/gguf/teachingassistant-f16.gguf"
    passed = run_module("stages.gguf", work, timeout=600)
    assert passed.returncode == 0, passed.stderr[-3000:]
    good = final.read_bytes()
    assert good[:4] == b"GGUF" and (work / "metrics/gguf.json").is_file()

    final.unlink()
    write_params(work, gguf={"parity_samples": 2, "parity_max_tokens": 32, "logit_tolerance": 1.0e-9})
    failed = run_module("stages.gguf", work, timeout=600)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "logits differ from models/merged" in failed.stderr
    assert sorted(p.name for p in (work / "models/gguf").iterdir()) == []  # nothing at the final path, no temp

    final.write_bytes(good)  # a complete file from an earlier run stays
    assert run_module("stages.gguf", work, timeout=600).returncode == 2
    assert final.read_bytes() == good and sorted(p.name for p in (work / "models/gguf").iterdir()) == [final.name]
