"""quantize (stages/quantize.py, ta/export/quantize.py): the tensor types llama.cpp really wrote, read back from
the file; a fallback from the asked-for type stops the stage. Plus the export stages with non-default types."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from ta.export import quantize
from ta.export.quantize import QuantizeError
from tests.helpers import run_module, write_params


def gguf_types(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(every tensor, 2-D weight matrices) -> count per type, read with gguf's own reader."""
    from collections import Counter

    from gguf import GGUFReader

    every, matrices = Counter(), Counter()
    for tensor in GGUFReader(str(path)).tensors:
        every[tensor.tensor_type.name] += 1
        if len(tensor.shape) >= 2:
            matrices[tensor.tensor_type.name] += 1
    return dict(every), dict(matrices)


def test_q4_k_m_histogram_matches_the_model_shape(chain: SimpleNamespace) -> None:
    config = json.loads((chain.merged / "config.json").read_text())
    layers = config["num_hidden_layers"]
    every, matrices = quantize.tensor_types(chain.q4)
    assert (dict(every), dict(matrices)) == gguf_types(chain.q4)
    # 7 weight matrices a layer (q, k, v, o, gate, up, down) + token embedding + output head.
    assert sum(matrices.values()) == 7 * layers + 2
    # 1-D tensors stay F32: two norms and three q/k/v biases a layer, plus the final norm.
    assert every["F32"] == 5 * layers + 1
    assert set(matrices) <= quantize.FAMILIES["q4_k_m"] and matrices["Q4_K"] > matrices.get("Q6_K", 0) > 0
    report = quantize.check_types(chain.q4, "q4_k_m", 0.0)
    assert report == {
        "tensor_types": dict(sorted(every.items())),
        "fallback_share": 0.0,
        "bytes": chain.q4.stat().st_size,
    }


def test_a_file_of_other_types_is_a_fallback(chain: SimpleNamespace) -> None:
    with pytest.raises(
        QuantizeError, match=r"f16.gguf: (\d+) of \1 weight matrices are not Q4_K/Q6_K .*fell back from q4_k_m"
    ):
        quantize.check_types(chain.f16, "q4_k_m", max_fallback_share=0.0)
    assert quantize.check_types(chain.f16, "q4_k_m", max_fallback_share=1.0)["fallback_share"] == 1.0


def test_an_unknown_quant_type_is_refused_before_llama_cpp_runs(tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match=r"llama.cpp [\d.]+ has no quantization type 'q3_zz'"):
        quantize.quantize(tmp_path / "absent.gguf", tmp_path / "x.gguf", "q3_zz", threads=1)


def test_widths_that_are_not_multiples_of_256_fall_back_and_are_caught(narrow_workspace: Path, tmp_path: Path) -> None:
    """A real llama.cpp fallback: a model whose hidden size (64) no k-quant block (256) divides (conftest's
    narrow_workspace). The file is named q4_k_m, but its matrices are not Q4_K/Q6_K, and check_types says so."""
    from ta.export.gguf import convert

    model_dir = narrow_workspace / "models/merged"
    convert(model_dir, tmp_path / "narrow-f16.gguf", "f16", "")
    quantize.quantize(tmp_path / "narrow-f16.gguf", tmp_path / "narrow-q4_k_m.gguf", "q4_k_m", threads=2)
    _, matrices = gguf_types(tmp_path / "narrow-q4_k_m.gguf")
    assert not set(matrices) <= quantize.FAMILIES["q4_k_m"], matrices  # llama.cpp fell back
    with pytest.raises(QuantizeError, match="fell back from q4_k_m — are hidden/intermediate sizes multiples of 256"):
        quantize.check_types(tmp_path / "narrow-q4_k_m.gguf", "q4_k_m", 0.0)


# ------------------------------------------------------------------------- other types, through the stages

EXPECTED_MATRICES = {"bf16": {"BF16"}, "q8_0": {"Q8_0"}}


@pytest.mark.parametrize("outtype", ["bf16", "q8_0"])
def test_the_export_stages_with_other_types(pipeline_repo: Path, tmp_path: Path, outtype: str) -> None:
    """`gguf.outtype` bf16 / q8_0 and several `quantize.types`: each file holds the types it is named for
    (read back with gguf's reader), parity holds, the Modelfile serves the first quantized type."""
    work = tmp_path / "work"
    shutil.copytree(pipeline_repo / "models/merged", work / "models/merged")
    (work / "data/prepared").mkdir(parents=True)
    shutil.copy(pipeline_repo / "data/prepared/sft_eval.jsonl", work / "data/prepared/sft_eval.jsonl")
    types = ["q5_k_m", "q4_k_m"] if outtype == "bf16" else ["q6_k"]
    write_params(work, gguf={"outtype": outtype}, quantize={"types": types})

    result = run_module("stages.gguf", work)
    assert result.returncode == 0, result.stderr[-3000:]
    source = work / f"models/gguf/teachingassistant-{outtype}.gguf"
    _, matrices = gguf_types(source)
    assert set(matrices) == EXPECTED_MATRICES[outtype]
    parity = json.loads((work / "metrics/gguf.json").read_text())
    assert parity["token_parity"]["mismatches"] == 0

    result = run_module("stages.quantize", work)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work / "metrics/quantize.json").read_text())
    assert list(report) == [outtype, *types]
    for qtype in types:
        _, matrices = gguf_types(work / f"models/gguf/teachingassistant-{qtype}.gguf")
        assert set(matrices) <= quantize.FAMILIES[qtype] and len(matrices) >= 1, (qtype, matrices)
        assert report[qtype]["fallback_share"] == 0.0
    modelfile = (work / "models/ollama/Modelfile").read_text()
    assert f"FROM ../gguf/teachingassistant-{types[0]}.gguf" in modelfile


def test_a_quantized_file_that_fell_back_is_not_left_at_its_final_path(narrow_workspace: Path, tmp_path: Path) -> None:
    """quantize as DVC runs it, on a model no k-quant block divides: the q4_k_m file falls back, the stage
    fails and leaves nothing at the final path; allowed to fall back (max_fallback_share 1.0), it is there."""
    from ta.export.gguf import convert

    work = shutil.copytree(narrow_workspace, tmp_path / "work")
    convert(work / "models/merged", work / "models/gguf/teachingassistant-f16.gguf", "f16", "")
    failed = run_module("stages.quantize", work, timeout=600)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "fell back from q4_k_m" in failed.stderr
    assert sorted(p.name for p in (work / "models/gguf").iterdir()) == ["teachingassistant-f16.gguf"]

    write_params(work, quantize={"max_fallback_share": 1.0})
    passed = run_module("stages.quantize", work, timeout=600)
    assert passed.returncode == 0, passed.stderr[-3000:]
    assert (work / "models/gguf/teachingassistant-q4_k_m.gguf").read_bytes()[:4] == b"GGUF"
