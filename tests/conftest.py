"""Session fixtures and the two tiers.

Tiers: `make test` runs `pytest -m "not pipeline"` (unit tests and one reduced run of the whole chain,
`reduced_repo`); `make test-all` runs everything. The `pipeline` marker is never written by hand: a test
gets it here from the fixtures it uses (`pipeline_repo` and everything built on it) or from living in
tests/e2e/ (the rule is tests.helpers.pipeline_reason; tests/test_tiers.py checks it).


`pipeline_repo` runs the whole `dvc repro` on the tiny default once per session in a temporary copy of the
repository; every artifact under test in the full tier was produced by the pipeline as a user runs it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from ta.allocator import keep_heap
from tests.helpers import DVC, PIPELINE_MARK, REPO, copy_repo, free_port, pipeline_reason, repo_env, run

# Offline, before anything imports transformers or datasets (they read these once, at import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# What every stage does (ta/reproducibility.py): freed tensors stay in the heap, here and in the processes the
# tests start, which would otherwise fault their pages in anew every training step.
keep_heap()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if pipeline_reason(getattr(item, "fixturenames", ()), item.path, Path(__file__).parent):
            item.add_marker(getattr(pytest.mark, PIPELINE_MARK))


# ------------------------------------------------------------------------------------- the full run

# ~6 min on an idle 2-core machine; a shared one has taken 45. The limit only stops a hung run.
PIPELINE_TIMEOUT_S = 3 * 3600


def planted_keys() -> dict[str, str]:
    """A fake key under every variable name params.yaml gives for one (selfinstruct, the judge, serving)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    names = [params["selfinstruct"]["api_key_env"], params["eval"]["judge_api_key_env"], params["serve"]["api_key_env"]]
    return {name: f"sk-planted-{name.lower()}-7f3a9c" for name in names if name}


# The pipeline's run has them in its environment; tests/e2e/test_secrets.py finds none in any file or log.
PLANTED_KEYS = planted_keys()


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary copy of the repo on which `dvc repro` has run to the end on the tiny default.

    TA_PIPELINE_REPO=<dir> reuses a repo where the pipeline has already run (for quick local iteration).
    """
    if os.environ.get("TA_PIPELINE_REPO"):
        return Path(os.environ["TA_PIPELINE_REPO"])
    repo = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    result = run([DVC, "repro"], cwd=repo, timeout=PIPELINE_TIMEOUT_S, env=repo_env(**PLANTED_KEYS))
    (repo.parent / "repro.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    return repo


@pytest.fixture(scope="session")
def q4_gguf(pipeline_repo: Path) -> Path:
    return pipeline_repo / "models/gguf/teachingassistant-q4_k_m.gguf"


@pytest.fixture(scope="session")
def f16_gguf(pipeline_repo: Path) -> Path:
    return pipeline_repo / "models/gguf/teachingassistant-f16.gguf"


@pytest.fixture(scope="session")
def merged_dir(pipeline_repo: Path) -> Path:
    return pipeline_repo / "models/merged"


# ---------------------------------------------------------------------------------- the reduced run

# Budgets of the reduced run: the same stages, commands and code paths, a few steps each.
REDUCED_PARAMS = {
    "base": {"tiny": {"pretrain_steps": 30}},
    "sft": {"max_steps": 6, "eval_steps": 3, "save_steps": 3, "logging_steps": 1},
    "dpo": {"max_steps": 4, "eval_steps": 2, "save_steps": 2, "logging_steps": 1},
    "gguf": {"parity_samples": 2, "parity_max_tokens": 64},
    "eval": {"max_samples": 4, "max_generations": 2, "max_new_tokens": 16},
}


def apply_overrides(params_file: Path, overrides: dict) -> None:
    """Change some keys of a params.yaml (what `dvc exp run -S key=value` does, without an experiment)."""
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))

    def merge(into: dict, changes: dict) -> None:
        for key, value in changes.items():
            assert key in into, f"{key}: not in params.yaml"  # as for -S, the key must exist
            if isinstance(value, dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(params, overrides)
    params_file.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="session")
def reduced_repo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repo on which `dvc repro` ran the whole chain with tiny budgets (REDUCED_PARAMS): the
    fast tier's one pipeline run.

    In a session that also runs the full pipeline (`make test-all`) the full run stands in for it: every
    check made on the reduced run holds on the full one, and CI does not pay for the chain twice.
    TA_REDUCED_REPO=<dir> reuses a finished reduced run.
    """
    if os.environ.get("TA_REDUCED_REPO"):
        return Path(os.environ["TA_REDUCED_REPO"])
    if any(item.get_closest_marker(PIPELINE_MARK) for item in request.session.items):
        return request.getfixturevalue("pipeline_repo")
    repo = copy_repo(tmp_path_factory.mktemp("reduced") / "repo")
    apply_overrides(repo / "params.yaml", REDUCED_PARAMS)
    run([DVC, "repro"], cwd=repo, timeout=PIPELINE_TIMEOUT_S)
    return repo


# --------------------------------------------------------------------------- llama.cpp's real server


@pytest.fixture(scope="session")
def llama_server(q4_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """llama.cpp's OpenAI-compatible server (`serve/llama_server.py`'s command) on a free 127.0.0.1 port,
    serving the pipeline's q4_k_m GGUF as `ta-lora` and requiring an API key: base_url (…/v1), port, key."""
    from serve.llama_server import server_command, server_env, wait_until_ready
    from ta.config import load_params
    from tests.helpers import REPO

    port, key = free_port(), "test-key-7f3a"
    log_file = tmp_path_factory.mktemp("llama_server") / "server.log"
    params = load_params(REPO / "params.yaml").serve
    with log_file.open("w") as log:
        process = subprocess.Popen(
            server_command(params, q4_gguf, port),
            env={**server_env(key), **{k: v for k, v in repo_env().items() if k == "PYTHONPATH"}},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            wait_until_ready(base_url, process, timeout=180, api_key=key)
        except RuntimeError as err:
            pytest.fail(f"{err}\n{log_file.read_text()[-3000:]}")
        yield SimpleNamespace(base_url=base_url, port=port, key=key, log=log_file)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------- Go's text/template


@pytest.fixture(scope="session")
def go_template() -> Callable[[str, dict[str, Any]], str]:
    """go_template(template, data): the text Go's own text/template renders (ta/export/gorender.py builds
    tools/gotemplate with Debian's Go; `.ci/services.sh` installs it). Without Go the tests fail: they do not skip."""
    from ta.export import gorender

    if not gorender.available():
        pytest.fail("go not found: .ci/services.sh installs it (apt-get install -y golang-go)")
    return gorender.render
