"""The guide's real run as one command: profiles/qwen2.5-7b-guide.yaml and tools/profile.py.

On a CPU, without downloading anything: the profile holds every value the guide gives, applies through
`dvc exp run -S` as one experiment, validates, and its memory estimate, trainer configurations and launch
commands come out as a 4-GPU ZeRO-2 bf16 run with gradient checkpointing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools import profile

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "profiles/qwen2.5-7b-guide.yaml"
BIN = Path(sys.executable).parent


def env(tmp_path: Path) -> dict[str, str]:
    """Offline, with an empty Hugging Face cache: nothing can be downloaded, nothing is found there either."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "DVC_NO_ANALYTICS": "1",
    }


def test_profile_carries_every_value_the_guide_gives() -> None:
    guide = yaml.safe_load(GUIDE.read_text(encoding="utf-8"))
    assert guide["base"]["model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert float(guide["lr"]) == 2e-4
    sft = guide["sft"]
    assert (sft["num_epochs"], sft["per_device_train_batch_size"], sft["gradient_accumulation_steps"]) == (3, 4, 8)
    assert sft["max_seq_len"] == 2048 and sft["gradient_checkpointing"] is True and sft["num_processes"] == 4
    zero = json.loads((REPO / sft["deepspeed_config"]).read_text(encoding="utf-8"))["zero_optimization"]["stage"]
    assert zero == 2
    dpo = guide["dpo"]
    assert (dpo["beta"], float(dpo["learning_rate"]), dpo["num_epochs"], dpo["num_processes"]) == (0.1, 5e-7, 1, 4)
    assert guide["merge"]["dtype"] == "bfloat16"
    assert guide["eval"]["max_new_tokens"] == 512 and guide["serve"]["max_model_len"] == 4096
    sft_sets = {s["hub"] for s in guide["prepare"]["sft_sources"] if isinstance(s, dict)}
    assert sft_sets == {
        "BAAI/COIG-KQ",
        "vicgalle/alpaca-gpt4",
        "anon8231489123/ShareGPT_Vicuna_unfiltered",
        "YeungNLP/firefly-train-1.1M",
    }
    preference_sets = {s["hub"] for s in guide["prepare"]["preference_sources"] if isinstance(s, dict)}
    assert preference_sets == {"openbmb/UltraFeedback", "Anthropic/hh-rlhf"}
    every_source = json.dumps(guide["prepare"])
    assert "drill" not in every_source  # the real datasets instead of the drill set


def test_check_proves_it_coherent_without_a_gpu_or_a_download(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tools.profile", "check", str(GUIDE)]
    result = subprocess.run(cmd, cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "params valid" in out
    # the guide's table 1.2 gives ~28 GB for LoRA under ZeRO-2 at batch 4 (fp16, checkpointing): the estimate
    # for this run must be of that order
    sft_line = next(line for line in out.splitlines() if line.startswith("sft: estimated peak GPU memory"))
    assert 15 <= float(sft_line.split()[5]) <= 40, sft_line
    assert any(line.startswith("dpo: estimated peak GPU memory") for line in out.splitlines())
    assert (
        "sft trainer: SFTConfig(bf16=True, fp16=False, activation_checkpointing=True, "
        "deepspeed='ds_config_zero2.json', learning_rate=0.0002, num_train_epochs=3.0, "
        "per_device_train_batch_size=4, gradient_accumulation_steps=8, max_length=2048)"
    ) in out
    assert (
        "dpo trainer: DPOConfig(bf16=True, fp16=False, activation_checkpointing=True, "
        "deepspeed='ds_config_zero2.json', learning_rate=5e-07, num_train_epochs=1.0, "
        "per_device_train_batch_size=2, gradient_accumulation_steps=8, max_length=2048, beta=0.1)"
    ) in out
    assert "sft: 4 processes per machine, DeepSpeed ZeRO stage 2" in out
    assert "--standalone --nproc_per_node=4 --module stages.sft" in out
    assert "torchrun --nnodes=2 --node_rank=R --nproc_per_node=4 --master_addr=<host of machine 0>" in out
    hub_cache = tmp_path / "hf-home" / "hub"
    assert not hub_cache.exists() or not any(hub_cache.iterdir())  # no weights, no config fetched


def test_overrides_are_what_hydra_parses_back() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    guide = profile.load_profile(GUIDE)
    parsed = OverridesParser.create().parse_overrides(profile.overrides(guide))
    assert {o.key_or_group: o.value() for o in parsed} == dict(profile.leaves(guide))


def test_run_applies_it_as_one_experiment(tmp_path: Path) -> None:
    """`tools.profile run` queues (here) the experiment; the params DVC recorded for it are params.yaml with
    the profile over it, and they validate."""
    repo = tmp_path / "repo"
    for rel in ("params.yaml", "dvc.yaml", "ds_config_zero2.json"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, repo / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for cmd in (
        ["git", "init", "-q"],
        [str(BIN / "dvc"), "init", "-q"],
        ["git", "add", "-A"],
        [*git, "commit", "-qm", "x"],
    ):
        subprocess.run(cmd, cwd=repo, env=env(tmp_path), check=True, capture_output=True)
    cmd = [sys.executable, "-m", "tools.profile", "run", str(GUIDE), "--queue", "-n", "guide-7b"]
    result = subprocess.run(
        cmd, cwd=repo, env={**env(tmp_path), "PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "Queued experiment 'guide-7b'" in result.stdout + result.stderr
    show = subprocess.run([str(BIN / "dvc"), "exp", "show", "--json"], cwd=repo, env=env(tmp_path), capture_output=True)
    (queued,) = [rev for row in json.loads(show.stdout) for exp in row.get("experiments") or [] for rev in exp["revs"]]
    recorded = queued["data"]["params"]["params.yaml"]["data"]

    expected = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    guide = yaml.safe_load(GUIDE.read_text(encoding="utf-8"))
    for section, values in guide.items():
        if isinstance(values, dict):
            for key, value in values.items():
                expected[section][key] = value if not isinstance(value, dict) else {**expected[section][key], **value}
        else:
            expected[section] = values
    assert json.loads(json.dumps(recorded)) == json.loads(json.dumps(expected, default=str))

    (tmp_path / "recorded.yaml").write_text(yaml.safe_dump(recorded, allow_unicode=True), encoding="utf-8")
    checked = subprocess.run([sys.executable, "-m", "ta.config", "--file", str(tmp_path / "recorded.yaml")], cwd=REPO)
    assert checked.returncode == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sft:\n  learning_rate: 1.0e-4\n", "profile: sft.learning_rate: not a key of params.yaml"),
        ("sft:\n  precision: fp8\n", "sft.precision: 'fp8' is not one of auto, fp32, bf16, fp16"),
    ],
)
def test_a_bad_profile_stops_before_dvc_with_one_line(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "tools.profile", "run", str(bad)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("profile: error: ") and message in line and "dvc exp run" not in result.stdout
