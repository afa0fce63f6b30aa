"""The whole pipeline, run as a user runs it: `dvc repro` in a fresh copy of the repository (conftest's
`pipeline_repo`), checked against expectations of its own, not against numbers the stages wrote."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import yaml

from tests.helpers import DVC, run

STAGES = ["base", "selfinstruct", "prepare", "sft", "dpo", "merge", "gguf", "quantize", "eval", "harness"]
FORCED = ["prepare", "sft", "dpo", "merge", "gguf", "quantize"]


def test_lock_file_lists_every_stage_in_order(pipeline_repo: Path) -> None:
    lock = yaml.safe_load((pipeline_repo / "dvc.lock").read_text())
    assert list(lock["stages"]) == STAGES


def test_quantized_gguf_exists_and_is_smaller_than_f16(pipeline_repo: Path) -> None:
    (q4,) = pipeline_repo.glob("models/**/*q4_k_m*.gguf")
    f16 = pipeline_repo / "models/gguf/teachingassistant-f16.gguf"
    assert q4.stat().st_size < 0.5 * f16.stat().st_size


def test_status_is_clean_and_a_second_repro_runs_nothing(pipeline_repo: Path) -> None:
    status = run([DVC, "status", "--json"], cwd=pipeline_repo)
    assert json.loads(status.stdout) == {}
    start = time.monotonic()
    again = run([DVC, "repro"], cwd=pipeline_repo)
    assert time.monotonic() - start < 60
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout


def output_hashes(repo: Path, stages: list[str]) -> dict[str, str]:
    """md5 of every file of every output (outs and metrics, cached or not) of `stages`, read from disk."""
    declared = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    hashes = {}
    for stage in stages:
        for entry in declared[stage].get("outs", []) + declared[stage].get("metrics", []):
            out = repo / (next(iter(entry)) if isinstance(entry, dict) else entry)
            for path in sorted([out] if out.is_file() else out.rglob("*")):
                if path.is_file() and path.name != ".gitignore":
                    hashes[path.relative_to(repo).as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return hashes


def test_forced_rerun_of_data_training_and_export_stages_is_byte_identical(pipeline_repo: Path) -> None:
    """Every output file's bytes are recorded before the forced rerun and compared after it: a stage that
    wrote other bytes (a new string-hash seed each process, a timing, a set order) fails here, whatever
    dvc.lock then says."""
    before = output_hashes(pipeline_repo, FORCED)
    assert any(name.startswith("models/sft/") for name in before) and "models/ollama/Modelfile" in before
    for stage in FORCED:
        run([DVC, "repro", "--force", "--single-item", stage], cwd=pipeline_repo)
    after = output_hashes(pipeline_repo, FORCED)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert changed == []
    status = run([DVC, "status", "--json"], cwd=pipeline_repo)
    assert json.loads(status.stdout) == {}


def test_hf_and_llama_cpp_tokenize_alike_beyond_the_stages_probes(pipeline_repo: Path) -> None:
    """Token parity on texts the gguf stage did not probe: later held-out conversations, chat prompts, and
    strings around the special tokens."""
    from llama_cpp import Llama

    from ta.models import load_tokenizer

    merged = pipeline_repo / "models/merged"
    tokenizer = load_tokenizer(merged)
    rows = (pipeline_repo / "data/prepared/sft_eval.jsonl").read_text(encoding="utf-8").splitlines()[8:24]
    texts = [tokenizer.apply_chat_template(json.loads(row)["messages"], tokenize=False) for row in rows]
    texts += [
        "<|im_start|>system\n<|im_end|><|im_end|>\n",
        "a<|endoftext|>b<|im_start|>c",
        "全角，标点！ＡＢＣ １２３ and   spaces\t\ttabs\n\n",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ 龘 emoji 🙂",
    ]
    vocab = Llama(str(pipeline_repo / "models/gguf/teachingassistant-q4_k_m.gguf"), vocab_only=True, verbose=False)
    for text in texts:
        hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True) == hf_ids, text[:60]


def test_the_quantized_file_really_is_q4_k(pipeline_repo: Path) -> None:
    """Read back with gguf's reader: every weight matrix is Q4_K or Q6_K (q4_k_m's mix), mostly Q4_K."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(pipeline_repo / "models/gguf/teachingassistant-q4_k_m.gguf"))
    matrices = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2)
    assert set(matrices) <= {"Q4_K", "Q6_K"}, matrices
    assert matrices["Q4_K"] > matrices["Q6_K"] > 0
