"""merge → gguf → quantize on the pipeline's own artifacts: parity checks that can fail, and types."""

from __future__ import annotations

import json
import shutil

import pytest

from stages import chat, gguf, merge, quantize
from stages.models import BaseModelRef
from stages.params import Gguf, ParamsError
from tests.conftest import BIN, run

pytestmark = pytest.mark.slow


def test_merged_model_computes_what_base_plus_adapter_computes(pipeline_repo, merged_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from stages.models import load_adapter_model

    ref = BaseModelRef(str(pipeline_repo / "models/base"), None, False)
    with_adapter = load_adapter_model(ref, pipeline_repo / "models/dpo", torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    ids = torch.tensor([[2, 100, 200, 300, 400, 3]])
    with torch.no_grad():
        assert torch.allclose(with_adapter(ids).logits, merged(ids).logits, atol=1e-4)


def test_merged_generation_config_stops_at_the_chat_end_token(merged_dir):
    from stages.models import load_tokenizer

    tokenizer = load_tokenizer(merged_dir)
    generation = json.loads((merged_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == tokenizer.convert_tokens_to_ids(chat.IM_END)
    assert tokenizer.convert_tokens_to_ids(chat.END_OF_TEXT) in generation["eos_token_id"]
    assert (merged_dir / "model.safetensors").is_file() and not list(merged_dir.glob("*.bin"))


def test_standalone_merge_cli_as_in_the_guide(pipeline_repo, tmp_path):
    out = tmp_path / "merged_model"
    cmd = [
        str(BIN / "python"),
        "-m",
        "stages.merge",
        "--adapter",
        "models/sft",
        "--base",
        "models/base",
        "--output",
        str(out),
    ]
    run(cmd, cwd=pipeline_repo)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_merge_refuses_a_dir_that_is_neither_adapter_nor_model(pipeline_repo, tmp_path):
    ref = BaseModelRef(str(pipeline_repo / "models/base"), None, False)
    with pytest.raises(FileNotFoundError, match="neither a PEFT adapter"):
        merge.merge(ref, tmp_path, tmp_path / "out", "float32")


def params() -> Gguf:
    return Gguf(parity_samples=4)


def test_parity_passes_on_the_pipeline_files(pipeline_repo, merged_dir, f16_gguf):
    result = gguf.check_parity(merged_dir, f16_gguf, pipeline_repo / "data/prepared/sft_eval.jsonl", params())
    assert result["token_parity"]["mismatches"] == 0
    assert result["logit_parity"]["max_abs_diff"] < 0.05


def test_token_parity_fails_when_a_special_token_is_split(pipeline_repo, merged_dir, f16_gguf, tmp_path):
    broken = tmp_path / "merged"
    shutil.copytree(merged_dir, broken)
    tokenizer_json = json.loads((broken / "tokenizer.json").read_text())
    tokenizer_json["added_tokens"] = [t for t in tokenizer_json["added_tokens"] if t["content"] != chat.IM_END]
    (broken / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    config = json.loads((broken / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {
        k: v for k, v in config["added_tokens_decoder"].items() if v["content"] != chat.IM_END
    }
    config["eos_token"] = chat.END_OF_TEXT  # else transformers re-adds <|im_end|> as the eos special token
    (broken / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    with pytest.raises(gguf.ParityError, match="tokenizer mismatch"):
        gguf.check_parity(broken, f16_gguf, pipeline_repo / "data/prepared/sft_eval.jsonl", params())


def test_token_parity_fails_when_tokenizer_files_are_missing(pipeline_repo, merged_dir, f16_gguf, tmp_path):
    broken = tmp_path / "merged"
    shutil.copytree(merged_dir, broken)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        (broken / name).unlink()
    with pytest.raises((OSError, ValueError, gguf.ParityError)):
        gguf.check_parity(broken, f16_gguf, pipeline_repo / "data/prepared/sft_eval.jsonl", params())


def test_logit_parity_fails_against_a_different_model(pipeline_repo, f16_gguf):
    # The base model's logits are not the merged model's: the check must notice.
    with pytest.raises(gguf.ParityError, match="logits differ"):
        gguf.check_parity(
            pipeline_repo / "models/base", f16_gguf, pipeline_repo / "data/prepared/sft_eval.jsonl", params()
        )


def test_q4_k_m_histogram_matches_the_model_shape(pipeline_repo, q4_gguf):
    config = json.loads((pipeline_repo / "models/merged/config.json").read_text())
    layers = config["num_hidden_layers"]
    every, matrices = quantize.tensor_types(q4_gguf)
    # 7 weight matrices a layer (q, k, v, o, gate, up, down) + token embedding + output head.
    assert sum(matrices.values()) == 7 * layers + 2
    # 1-D tensors stay F32: two norms and three q/k/v biases a layer, plus the final norm.
    assert every["F32"] == 5 * layers + 1
    assert set(matrices) <= quantize.FAMILIES["q4_k_m"]


def test_fallback_is_caught_when_types_do_not_match(f16_gguf):
    with pytest.raises(quantize.QuantizeError, match="fell back from q4_k_m"):
        quantize.check_types(f16_gguf, "q4_k_m", max_fallback_share=0.0)


def test_unknown_quant_type_is_a_params_error(f16_gguf, tmp_path):
    with pytest.raises(ParamsError, match="quantize.types: unknown type 'q3_zz'"):
        quantize.quantize(f16_gguf, tmp_path / "x.gguf", "q3_zz", threads=1)


def test_gguf_outtype_is_validated(tmp_path):
    with pytest.raises(ParamsError, match="gguf.outtype"):
        gguf.convert(tmp_path, tmp_path / "x.gguf", "f8", "")


def test_converter_is_found_in_the_venv():
    from stages.llama_cpp import converter_dir

    assert (converter_dir() / "convert_hf_to_gguf.py").is_file()
    assert (converter_dir() / "gguf-py" / "gguf").is_dir()


def test_user_llama_cpp_dir_without_converter_is_a_clear_error(tmp_path):
    from stages.llama_cpp import ConverterNotFound, converter_dir

    with pytest.raises(ConverterNotFound, match="gguf.llama_cpp_dir"):
        converter_dir(str(tmp_path))


def test_modelfile_points_at_the_quantized_file(pipeline_repo):
    modelfile = (pipeline_repo / "models/ollama/Modelfile").read_text()
    target = modelfile.split("FROM ", 1)[1].splitlines()[0]
    assert (pipeline_repo / "models/ollama" / target).resolve() == (
        pipeline_repo / "models/gguf/teachingassistant-q4_k_m.gguf"
    ).resolve()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
