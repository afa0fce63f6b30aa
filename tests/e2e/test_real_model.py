"""The user's real job on a Qwen2.5-shaped model: every stage, then the artifacts as the ecosystem loads them.

tools/qwen_shaped.py builds a stand-in for a hub snapshot of Qwen/Qwen2.5-7B-Instruct (the real Qwen2 byte-level
BPE tokenizer, the instruct template inside tokenizer_config.json, bf16 weights in two shards, tied embeddings);
`dvc exp run -S base.model=<that dir>` runs base → eval on it with short budgets, in a fresh copy of the
repository. Nothing here depends on how the tiny model is built: no SentencePiece model, no chat_template.jinja.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.pipeline

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
ARTIFACTS = ["base", "sft", "dpo", "merged", "gguf_f16", "gguf_q4_k_m"]
MAX_TOKENS = 128

# Short budgets: the 152k-row head makes every step ~4-6 s on two cores. The same stages and code paths.
QWEN_PARAMS = {
    "reproducibility": {"threads": 0},
    "prepare": {"eval_fraction": 0.01, "max_tokens": MAX_TOKENS},
    "sft": {
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "max_seq_len": MAX_TOKENS,
        "eval_steps": 2,
        "save_steps": 0,
        "logging_steps": 1,
        "early_stopping_patience": 0,
    },
    "dpo": {
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "max_length": MAX_TOKENS,
        "eval_steps": 2,
        "save_steps": 0,
        "logging_steps": 1,
    },
    "merge": {"dtype": "bfloat16"},  # the model's own dtype, as for a real 7B
    "gguf": {"parity_samples": 2, "parity_max_tokens": 48},
    "eval": {
        "max_samples": 2,
        "max_generations": 1,
        "max_new_tokens": 4,
        "batch_size": 4,
        "sample_prompts": ["你好，请介绍一下你自己。"],
    },
}


def env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DVC_NO_ANALYTICS": "1",
        **extra,
    }


def run(cmd: list[str], cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def copy_repo(dest: Path) -> Path:
    """The project's files (tracked and untracked-not-ignored), committed in a fresh git repo, DVC initialised,
    without the results of the last tiny run."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file() and rel.split("/")[0] not in ("metrics", "dvclive") and rel != "dvc.lock":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    run(["git", "init", "-q", "-b", "main"], dest)
    if not (dest / ".dvc").is_dir():
        run([DVC, "init", "-q"], dest)
    params = yaml.safe_load((dest / "params.yaml").read_text(encoding="utf-8"))
    for section, values in QWEN_PARAMS.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    run(["git", "add", "-A"], dest)
    run([*GIT, "commit", "-q", "-m", "init"], dest)
    return dest


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools import qwen_shaped

    return qwen_shaped.build(tmp_path_factory.mktemp("hub") / "qwen2.5-shaped")


@pytest.fixture(scope="module")
def qwen_repo(tmp_path_factory: pytest.TempPathFactory, qwen_dir: Path) -> Path:
    """A copy of the repository after `dvc exp run -S base.model=<the Qwen2.5-shaped dir>`."""
    repo = copy_repo(tmp_path_factory.mktemp("qwen-run") / "repo")
    run([DVC, "exp", "run", "-S", f"base.model={qwen_dir}"], repo)
    return repo


@pytest.fixture(params=["tiny", "qwen2.5-shaped"])
def artifacts_repo(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny pipeline's run (conftest's pipeline_repo) or the Qwen2.5-shaped one, as the working directory of
    a user's tool (adapters name their base as the relative models/base)."""
    repo = request.getfixturevalue("pipeline_repo" if request.param == "tiny" else "qwen_repo")
    monkeypatch.chdir(repo)
    return repo


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_base_snapshots_the_model_and_pins_it_by_content(qwen_repo: Path, qwen_dir: Path) -> None:
    info = read_json(qwen_repo / "models/base/base.json")
    assert info["source"] == "local" and info["revision"] is None and info["digest"].startswith("sha256:")
    text = (qwen_repo / "models/base/base.json").read_text(encoding="utf-8")
    assert str(qwen_dir) not in text and str(Path.home()) not in text and '"/' not in text  # no absolute path
    for file in qwen_dir.iterdir():  # weights, configs, tokenizer files: byte for byte
        assert (qwen_repo / "models/base" / file.name).read_bytes() == file.read_bytes(), file.name


def test_prepare_counts_tokens_with_the_qwen_tokenizer(qwen_repo: Path, qwen_dir: Path) -> None:
    """Which rows are too long is decided by Qwen's own token counts (tiny's tokenizer would count others)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(qwen_dir))
    params = yaml.safe_load((qwen_repo / "params.yaml").read_text(encoding="utf-8"))["prepare"]
    system = [{"role": "system", "content": params["system_prompt"]}]

    def templated_length(question: str, answer: str) -> int:
        messages = system + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))

    expected = set()
    for source in params["sft_sources"]:
        lines = (qwen_repo / source).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            row = json.loads(line)
            if templated_length(row["question"], row["answer"]) > MAX_TOKENS:
                expected.add(f"{source}:{number}")
    rejects = [json.loads(line) for line in (qwen_repo / "data/prepared/rejects.jsonl").open(encoding="utf-8")]
    too_long = {r["source"] for r in rejects if r["reason"] == "too_long" and "sft" in r["source"]}
    assert too_long == expected and len(expected) > 100
    kept = [json.loads(line) for line in (qwen_repo / "data/prepared/sft_train.jsonl").open(encoding="utf-8")]
    assert max(len(tokenizer.apply_chat_template(r["messages"], return_dict=False)) for r in kept) <= MAX_TOKENS


def test_sft_and_dpo_trained_adapters_on_the_pinned_base(qwen_repo: Path) -> None:
    for stage in ("sft", "dpo"):
        config = read_json(qwen_repo / f"models/{stage}/adapter_config.json")
        assert config["base_model_name_or_path"] == "models/base"  # relative: found again after a pull elsewhere
        assert read_json(qwen_repo / f"dvclive/{stage}/metrics.json")["step"] == 2
    assert not any((qwen_repo / "models/sft").glob("*.jinja"))  # the template stays in tokenizer_config.json


def test_merged_model_is_bf16_with_both_eos_ids(qwen_repo: Path) -> None:
    config = read_json(qwen_repo / "models/merged/config.json")
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    assert read_json(qwen_repo / "models/merged/generation_config.json")["eos_token_id"] == [151645, 151643]


def test_gguf_went_through_the_real_qwen2_tokenizer_path_with_parity(qwen_repo: Path) -> None:
    from llama_cpp import Llama

    gguf = Llama(str(qwen_repo / "models/gguf/teachingassistant-f16.gguf"), vocab_only=True, verbose=False)
    assert gguf.metadata["tokenizer.ggml.model"] == "gpt2" and gguf.metadata["tokenizer.ggml.pre"] == "qwen2"
    assert gguf.n_vocab() == 151936
    gguf.close()
    parity = read_json(qwen_repo / "metrics/gguf.json")
    assert parity["token_parity"] == {"texts": 5, "mismatches": 0, "first_mismatch": None}
    logits = parity["logit_parity"]
    assert logits["hf_dtype"] == "bfloat16" and logits["tokens"] == 48
    assert logits["max_abs_diff"] <= logits["allowed_max_abs_diff"] and logits["top1_agreement"] >= 0.98


def test_quantized_file_and_modelfile_follow_the_model(qwen_repo: Path) -> None:
    types = read_json(qwen_repo / "metrics/quantize.json")["q4_k_m"]["tensor_types"]
    assert types.get("Q4_K", 0) > 0 and set(types) <= {"Q4_K", "Q6_K", "F32"}
    modelfile = (qwen_repo / "models/ollama/Modelfile").read_text(encoding="utf-8")
    # Qwen2.5's template inserts its own system prompt when a conversation has none: so does the TEMPLATE
    assert "{{ if not .System }}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud." in modelfile
    assert "from models/merged/tokenizer_config.json" in modelfile
    stops = [line.split('"')[1] for line in modelfile.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]


def test_eval_scores_all_six_artifacts(qwen_repo: Path) -> None:
    report = read_json(qwen_repo / "metrics/eval.json")
    assert list(report["perplexity"]) == ARTIFACTS
    assert all(math.isfinite(value) and value > 1 for value in report["perplexity"].values())
    # the same weights in three runtimes: merged (bf16 → fp32 on CPU), f16 GGUF, and the dpo adapter unmerged
    merged = report["perplexity"]["merged"]
    assert abs(report["perplexity"]["gguf_f16"] - merged) / merged < 0.01
    assert abs(report["perplexity"]["dpo"] - merged) / merged < 0.01


def test_artifacts_load_the_standard_way(artifacts_repo: Path) -> None:
    """What vLLM, TRL and lm-eval do — plain AutoTokenizer / AutoModelForCausalLM on the artifact dirs — gives
    the ids of the project's loader and of the GGUF, the same chat template, and the same model."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ta.base_model import read_base_ref
    from ta.models import load_adapter_model, load_tokenizer

    gguf = Llama("models/gguf/teachingassistant-f16.gguf", vocab_only=True, verbose=False)
    template = load_tokenizer("models/base").chat_template
    conversation = [
        {"role": "system", "content": "你是教学助手。"},
        {"role": "user", "content": "你好！1+1 等于几？"},
        {"role": "assistant", "content": "等于 2。<tool_call>"},
    ]
    texts = ["你好", "emoji 🙂 and 龘, 3.14159!", "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"]
    for artifact in ("models/base", "models/sft", "models/dpo", "models/merged"):
        outside = AutoTokenizer.from_pretrained(artifact, trust_remote_code=False)  # as vLLM passes it
        ours = load_tokenizer(artifact)
        assert outside.chat_template == template, artifact
        rendered = outside.apply_chat_template(conversation, tokenize=False)
        assert rendered == ours.apply_chat_template(conversation, tokenize=False)
        for text in [*texts, rendered]:
            ids = outside.encode(text, add_special_tokens=False)
            assert ids == ours.encode(text, add_special_tokens=False), (artifact, text)
            assert ids == gguf.tokenize(text.encode("utf-8"), add_bos=False, special=True), (artifact, text)
    gguf.close()

    ids = torch.tensor([AutoTokenizer.from_pretrained("models/base").encode("<|im_start|>user\n你好<|im_end|>\n")])
    with torch.no_grad():
        adapter_outside = AutoModelForCausalLM.from_pretrained("models/dpo", dtype=torch.float32)(ids).logits
        adapter_ours = load_adapter_model(read_base_ref(), Path("models/dpo"), torch.float32)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained("models/merged", dtype=torch.float32)(ids).logits
    assert torch.equal(adapter_outside, adapter_ours)
    scale = adapter_ours.std().item()
    assert (merged - adapter_ours).abs().max().item() < 0.1 * scale  # merged in bf16 (Qwen) or fp32: rounding only


def test_pins_are_portable_after_a_dvc_pull_elsewhere(qwen_repo: Path, qwen_dir: Path, tmp_path: Path) -> None:
    """Push the run to a remote, clone it elsewhere with the model directory gone: every consumer finds the
    weights from base.json + models/base, and DVC sees nothing to rerun."""
    remote = tmp_path / "remote"
    run([DVC, "remote", "add", "-d", "-f", "local", str(remote)], qwen_repo)
    run(["git", "add", "-A"], qwen_repo)
    run([*GIT, "commit", "-q", "-m", "qwen run"], qwen_repo)
    run([DVC, "push", "-q"], qwen_repo)
    clone = tmp_path / "elsewhere"
    run(["git", "clone", "-q", str(qwen_repo), str(clone)], tmp_path)
    moved = qwen_dir.with_name("moved-away")
    qwen_dir.rename(moved)  # the original model directory is not on the other machine
    try:
        run([DVC, "pull", "-q"], clone)
        assert "up to date" in run([DVC, "status"], clone).stdout
        command = run([sys.executable, "-m", "serve.vllm", "--dry-run"], clone).stdout.split()
        assert command[:3] == ["vllm", "serve", "models/base"] and "--revision" not in command
        load = (
            "from ta.base_model import read_base_ref; from ta.models import load_base_model;"
            "m = load_base_model(read_base_ref()); print(m.dtype, m.config.vocab_size)"
        )
        assert run([sys.executable, "-c", load], clone).stdout.split()[-2:] == ["torch.bfloat16", "151936"]
    finally:
        moved.rename(qwen_dir)


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_qlora_and_full_fine_tuning_train_on_it(qwen_repo: Path, method: str) -> None:
    """The other two methods through sft and dpo, one step each (the stages after them are the lora run's)."""
    steps = ["-S", "sft.max_steps=1", "-S", "sft.eval_steps=1", "-S", "dpo.max_steps=1", "-S", "dpo.eval_steps=1"]
    run([DVC, "exp", "run", "-S", f"sft.method={method}", *steps, "dpo"], qwen_repo)
    sft_dir, dpo_dir = qwen_repo / "models/sft", qwen_repo / "models/dpo"
    if method == "full":
        assert read_json(sft_dir / "config.json")["architectures"] == ["Qwen2ForCausalLM"]
        assert (dpo_dir / "config.json").is_file() and not (dpo_dir / "adapter_config.json").exists()
    else:
        assert (sft_dir / "adapter_config.json").is_file() and (dpo_dir / "adapter_config.json").is_file()
    assert read_json(qwen_repo / "dvclive/dpo/metrics.json")["step"] == 1
