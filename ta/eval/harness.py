"""harness: lm-evaluation-harness, the standard harness, on the chain's exported artifacts.

The merged model runs through lm-eval's own `hf` backend; the quantized GGUF through llama.cpp's
OpenAI-compatible server (`python -m serve.llama_server`, started here on a free loopback port with a
one-off API key) and ta/eval/llama_server_lm.py. Both score the same tasks with lm-eval's own metrics.

The local task `ta_pref` is the held-out preference split as a multiple-choice task: the context is the
prompt rendered with the model's chat template up to the assistant's header, the choices are the chosen
and the rejected answer with their end-of-turn token, the chosen one is right. `acc` is then the share of
pairs whose chosen answer has the higher summed log-probability, `acc_norm` the same per character of
answer (lm-eval divides by `len(choice)`). Every context starts with the BOS token llama.cpp knows for the
GGUF (a Qwen-style model adds none by itself): llama-cpp-python's server scores prompt tokens correctly
only after one (see llama_server_lm.py), and the `hf` backend gets the same text, so both runtimes score
the same token ids. It is built from data/prepared/pref_eval.jsonl into a temporary folder and read
through the `json` dataset builder: offline.

Any other task name is lm-eval's own (ceval-valid, cmmlu, ...): its dataset comes from the Hugging Face Hub.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ta import models, paths
from ta.config import Harness, Serve
from ta.data.io import read_jsonl
from ta.errors import EvalError, MissingInputError
from ta.eval.metrics import finite_or_null
from ta.files import write_atomically
from ta.server import wait_until_ready

log = logging.getLogger("harness")

LOCAL_TASKS = {"ta_pref": paths.PREF_EVAL}  # task name -> the held-out split it is built from
ARTIFACTS = {"merged": paths.MERGED_DIR, "gguf_q4_k_m": paths.gguf_file("q4_k_m")}  # the order of the report

Render = Callable[[list[dict[str, str]], bool], str]  # (messages, add_generation_prompt) -> text


# ------------------------------------------------------------------------------------ the local task


def preference_doc(row: dict[str, Any], render: Render, document_start: str) -> dict[str, Any]:
    """One held-out pair as a multiple-choice document: {"context", "choices": [chosen, rejected]}.

    The context stops before the whitespace that ends the assistant's header ("<|im_start|>assistant\n"):
    lm-eval moves a context's trailing whitespace into every continuation anyway (`TemplateLM._encode_pair`),
    so the answers are written here as they are scored. That token is the same for both answers: `acc` does
    not depend on it."""
    header = render(row["prompt"], True)
    context = header.rstrip()
    choices = []
    for answer in (row["chosen"], row["rejected"]):
        full = render(row["prompt"] + answer, False).rstrip("\n")  # the template's newline after a turn is not scored
        if not full.startswith(context):
            where = f"{paths.PREF_EVAL}: {row.get('id', '?')}"
            raise EvalError(f"{where}: the chat template does not render the conversation prefix by prefix")
        choices.append(full[len(context) :])
    return {"context": document_start + context, "choices": choices}


def task_config(name: str, data_file: Path, cache_dir: Path) -> dict[str, Any]:
    """lm-eval's task YAML for a local multiple-choice task over a JSON-lines file."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",  # field names: the text goes in as it is, not through Jinja
        "doc_to_choice": "choices",
        "doc_to_target": 0,
        "target_delimiter": "",  # the context ends with the assistant's header; the answer follows directly
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


def write_local_tasks(task_dir: Path, names: list[str], render: Render, document_start: str) -> None:
    """Each local task in `names` as <task_dir>/<name>.jsonl and <name>.yaml, for TaskManager(include_path=)."""
    import yaml

    for name in names:
        rows = read_jsonl(LOCAL_TASKS[name])
        if not rows:
            raise EvalError(f"{LOCAL_TASKS[name]}: no held-out rows (prepare.eval_fraction?)")
        data_file = task_dir / f"{name}.jsonl"
        lines = [json.dumps(preference_doc(row, render, document_start), ensure_ascii=False) for row in rows]
        data_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        config = task_config(name, data_file, task_dir / "datasets_cache")
        (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")


def gguf_bos(gguf_path: Path) -> tuple[int, str]:
    """The BOS token llama.cpp uses for this GGUF (its own default when the file names none) and its text."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        bos = vocab.token_bos()
        if bos < 0:
            raise EvalError(f"{gguf_path}: no BOS token; llama.cpp's server cannot score prompt tokens without one")
        return bos, vocab.detokenize([bos], special=True).decode("utf-8")
    finally:
        vocab.close()


# ---------------------------------------------------------------------------------------- the models


def hf_model(path: Path, params: Harness) -> Any:
    """lm-eval's `hf` backend on a merged model dir, with the project's tokenizer loader (ta/models.py)."""
    import torch
    from lm_eval.models.huggingface import HFLM

    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[models.resolve_precision(params.precision)]
    return HFLM(
        pretrained=str(path),
        tokenizer=models.load_tokenizer(path),
        dtype=dtype,
        device="cuda" if torch.cuda.is_available() else "cpu",
        batch_size=params.batch_size,
        trust_remote_code=False,
    )


@contextmanager
def llama_server(gguf_path: Path, serve: Serve, log_file: Path, timeout: float = 180.0) -> Iterator[tuple[str, str]]:
    """`python -m serve.llama_server` on `gguf_path`, on a free port with a one-off API key, its output in
    `log_file`: yields (base_url, key) once it answers, stops it afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = secrets.token_hex(16)
    command = [sys.executable, "-m", "serve.llama_server", "--gguf", str(gguf_path), "--port", str(port)]
    with log_file.open("w") as log_stream:
        process = subprocess.Popen(
            command, env={**os.environ, serve.api_key_env: key}, stdout=log_stream, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_ready(base_url, process, timeout, api_key=key, log_file=log_file)
        yield base_url, key
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------- evaluation


def evaluate(lm: Any, params: Harness, task_dir: Path) -> dict[str, dict[str, float | int]]:
    """params.tasks on one model: task -> metric -> value."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    hub_tasks = [task for task in params.tasks if task not in LOCAL_TASKS]
    manager = TaskManager(include_path=str(task_dir), include_defaults=bool(hub_tasks))  # the index costs seconds
    output = simple_evaluate(
        model=lm,
        tasks=list(params.tasks),
        task_manager=manager,
        limit=params.limit or None,
        bootstrap_iters=0,  # no standard errors: the report keeps values only
        log_samples=False,
    )
    return summarize(output["results"], output.get("n-samples", {}))


def summarize(results: dict[str, dict[str, Any]], n_samples: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """lm-eval's results as task -> {metric: value rounded to 4 places, samples: n}: the `,none` filter
    suffix, standard errors and aliases dropped; another filter stays in the name (`exact_match,strict-match`)."""
    report: dict[str, dict[str, Any]] = {}
    for task in sorted(results):
        values: dict[str, Any] = {}
        for key, value in sorted(results[task].items()):
            metric, _, filter_name = key.partition(",")
            if not filter_name or "_stderr" in metric or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            values[metric if filter_name == "none" else key] = round(float(value), 4)
        if task in n_samples:
            values["samples"] = n_samples[task]["effective"]
        report[task] = values
    return report


def check_inputs(params: Harness) -> None:
    for name in params.artifacts:
        if not ARTIFACTS[name].exists():
            raise MissingInputError(f"{ARTIFACTS[name]}: missing artifact {name!r}; run `dvc repro` first")
    for task in params.tasks:
        if task in LOCAL_TASKS and not LOCAL_TASKS[task].exists():
            raise MissingInputError(f"{LOCAL_TASKS[task]}: missing; run `dvc repro prepare` first")


def run(params: Harness, serve: Serve) -> dict[str, Any]:
    """Every artifact of `harness.artifacts` on every task of `harness.tasks`; writes metrics/harness.json."""
    check_inputs(params)
    if all(task in LOCAL_TASKS for task in params.tasks):
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read by datasets at import, which comes later
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = models.load_tokenizer(paths.MERGED_DIR)  # its chat template is the GGUF's too

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    from ta.eval.llama_server_lm import LlamaServerLM

    bos = gguf_bos(ARTIFACTS["gguf_q4_k_m"])
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ta-harness-") as temp:
        task_dir = Path(temp)
        write_local_tasks(task_dir, [t for t in params.tasks if t in LOCAL_TASKS], render, bos[1])
        for name in [name for name in ARTIFACTS if name in params.artifacts]:
            started = time.perf_counter()
            if name == "merged":
                report[name] = evaluate(hf_model(ARTIFACTS[name], params), params, task_dir)
            else:
                with llama_server(ARTIFACTS[name], serve, task_dir / "server.log") as (base_url, key):
                    lm = LlamaServerLM(base_url, serve.lora_name, key, bos)
                    report[name] = evaluate(lm, params, task_dir)
            log.info("%s: %s (%.1f s)", name, report[name], time.perf_counter() - started)
    text = json.dumps(finite_or_null(report), ensure_ascii=False, indent=2, allow_nan=False)
    write_atomically(paths.HARNESS_METRICS, text + "\n")
    return report
