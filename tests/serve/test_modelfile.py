"""`python -m serve.modelfile` regenerates the Modelfile the quantize stage wrote, from the same inputs."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import run_module


def test_the_command_writes_what_the_stage_wrote(reduced_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "Modelfile"
    result = run_module("serve.modelfile", reduced_repo, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n"
    ours, stage = (
        out.read_text(encoding="utf-8"),
        (reduced_repo / "models/ollama/Modelfile").read_text(encoding="utf-8"),
    )
    # the same file but for the relative FROM path and the `ollama create` line, which follow --out
    differ = [(a, b) for a, b in zip(ours.splitlines(), stage.splitlines(), strict=True) if a != b]
    assert [a.split(" ", 1)[0] for a, _ in differ] == ["#", "FROM"]
    assert (out.parent / ours.split("FROM ", 1)[1].splitlines()[0]).resolve() == (
        reduced_repo / "models/gguf/teachingassistant-q4_k_m.gguf"
    ).resolve()


def test_a_model_dir_without_a_tokenizer_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    result = run_module("serve.modelfile", tmp_path, "--model-dir", str(missing))
    assert result.returncode == 2
    assert result.stderr == (
        f"modelfile: error: {missing}/tokenizer_config.json: not found (is {missing} a model dir with its "
        "tokenizer files?)\n"
    )
