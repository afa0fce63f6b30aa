"""Self-instruct against a real llama.cpp server on 127.0.0.1 serving the pipeline's own q4_k_m GGUF.

The tiny model writes nonsense; the mechanics are what is tested. A JSON schema sent through
`selfinstruct.extra_body` (llama.cpp turns it into a grammar) makes the model write replies of a chosen
shape — including exact strings where a filter must trip. A recording proxy between the stage and the
server is the independent witness of what was sent: generation, each filter on a real reply, a run killed
mid-way and resumed without repeating a request it had an answer for, the budget stop, and the whole loop
through DVC (generate, review, prepare takes exactly the accepted rows).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from ta import paths
from ta.selfinstruct.prompts import load_templates

pytestmark = pytest.mark.pipeline

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SEED_QUESTION = json.loads((REPO / "data/raw/sft_stem.jsonl").read_text("utf-8").splitlines()[0])["question"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama(q4_gguf: Path):
    """llama.cpp's OpenAI-compatible server on the pipeline's q4_k_m GGUF, prompts in the GGUF's own chat
    template. n_ctx 4096 although the tiny model was trained on 1024 positions: replies forced through a
    grammar take several tokens per character, and the text is nonsense either way."""
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(q4_gguf), "--model_alias", "ta-lora",
        "--chat_format", "chat_template.default", "--n_ctx", "4096", "--n_threads", "2",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {server.stderr.read()[-2000:]}")
            try:
                if requests.get(f"{base_url}/models", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not come up within 120 s")
            time.sleep(0.5)
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=30)


class RecordingProxy:
    """Forwards every POST to the llama.cpp server and records the JSON body it was sent."""

    def __init__(self, target: str) -> None:
        self.bodies: list[dict] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                data = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.bodies.append(json.loads(data))
                upstream = urllib.request.Request(
                    target + self.path.removeprefix("/v1"), data, {"Content-Type": "application/json"}
                )
                try:
                    with urllib.request.urlopen(upstream, timeout=600) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as err:
                    status, payload = err.code, err.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(llama: str):
    recording = RecordingProxy(llama)
    yield recording
    recording.close()


# ----------------------------------------------------------------------------------------- schemas


def text(low: int, high: int) -> dict:
    return {"type": "string", "minLength": low, "maxLength": high}


def exactly(value: str) -> dict:
    return {"type": "string", "enum": [value]}


def pair(instruction: dict, answer: dict, answer_key: str = "answer") -> dict:
    return {
        "type": "object",
        "properties": {"instruction": instruction, answer_key: answer},
        "required": ["instruction", answer_key],
    }


def reply_schema(items: list[dict] | dict, count: int = 0) -> dict:
    """response_format for llama.cpp: {"pairs": [...]} with the given items (a list: one schema per position)."""
    if isinstance(items, list):
        array = {"type": "array", "prefixItems": items}
    else:
        array = {"type": "array", "items": items, "minItems": count, "maxItems": count}
    return {"type": "json_object", "schema": {"type": "object", "properties": {"pairs": array}, "required": ["pairs"]}}


NONSENSE = pair(text(6, 14), text(20, 25))  # passes the length bounds below; the words are the tiny model's


# ------------------------------------------------------------------------------------------ running


def with_selfinstruct(params_file: Path, proxy: RecordingProxy, **selfinstruct) -> dict:
    """params.yaml with selfinstruct on and pointed at the proxy, prompts small enough for the tiny model."""
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["selfinstruct"].update(
        {
            "enabled": True,
            "base_url": proxy.base_url,
            "model": "ta-lora",
            "api_key_env": "",
            "seed_examples": 2,
            "generated_examples": 1,
            "example_max_chars": 40,
            "max_tokens": 600,
            "min_instruction_chars": 5,
            "min_answer_chars": 10,
            "max_answer_chars": 40,
            "round_size": 2,
            "concurrency": 2,
            **selfinstruct,
        }
    )
    return params


def workspace(folder: Path, proxy: RecordingProxy, **selfinstruct) -> Path:
    """The stage's working directory: those params, the shipped templates and seeds."""
    params = with_selfinstruct(REPO / "params.yaml", proxy, **selfinstruct)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    for tree in ("prompts", "data/raw"):
        shutil.copytree(REPO / tree, folder / tree, dirs_exist_ok=True)
    return folder


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def stage(cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stages.selfinstruct", "-v"],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def whole_lines(path: Path) -> list[dict]:
    """The entries of a file another process is appending to: a last line not yet ended is left out."""
    if not path.is_file():
        return []
    *whole, _ = path.read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in whole if line.strip()]


def outputs(cwd: Path) -> dict[Path, bytes]:
    files = [paths.REVIEW_FILE, paths.RESPONSE_CACHE, paths.SELFINSTRUCT_REJECTS, paths.SELFINSTRUCT_METRICS]
    return {path: (cwd / path).read_bytes() for path in files}


def sent(body: dict) -> tuple[str, int]:
    """What identifies one request on the wire: its prompt and its sampling seed."""
    return json.dumps(body["messages"], ensure_ascii=False), body["seed"]


# -------------------------------------------------------------------------------------------- tests


def test_generation_goes_to_review_with_provenance_and_a_rerun_sends_nothing(proxy, tmp_path: Path) -> None:
    ws = workspace(
        tmp_path, proxy, num_pairs=4, pairs_per_request=2, extra_body={"response_format": reply_schema(NONSENSE, 2)}
    )
    result = stage(ws)
    assert result.returncode == 0, result.stderr
    rows = jsonl(ws / paths.REVIEW_FILE)
    cache = jsonl(ws / paths.RESPONSE_CACHE)
    metrics = json.loads((ws / paths.SELFINSTRUCT_METRICS).read_text())
    assert len(rows) >= 4 and {row["status"] for row in rows} == {"pending"}
    assert len(proxy.bodies) == len(cache) == metrics["replies"] and metrics["stopped_by"] == "num_pairs"
    digest = load_templates("zh", REPO / "prompts/selfinstruct").digest
    keys = {entry["key"][:16] for entry in cache}
    for row in rows:
        origin = row["provenance"]
        assert (origin["endpoint"], origin["model"], origin["template"]) == (proxy.base_url, "ta-lora", digest)
        assert origin["request"] in keys and row["nearest"]["source"]
    # the request a pair came from went over the wire as built: the template filled in for its subject and
    # level, few-shot examples, its own sampling seed, the schema from extra_body
    (request,) = [entry["request"] for entry in cache if entry["key"].startswith(rows[0]["provenance"]["request"])]
    (wire,) = [body for body in proxy.bodies if sent(body) == sent(request)]
    user = wire["messages"][1]["content"]
    assert rows[0]["subject"] in user and rows[0]["difficulty"] in user and '"instruction":' in user
    assert isinstance(wire["seed"], int) and wire["response_format"] == request["response_format"]
    assert sum(metrics["accepted_by_subject"].values()) == metrics["accepted"] == len(rows)

    before = outputs(ws)
    again = stage(ws)
    assert again.returncode == 0, again.stderr
    assert len(proxy.bodies) == len(cache), "a rerun must find every reply in the cache"
    assert "0 requests sent (0 tokens)" in again.stderr and outputs(ws) == before


# One position of the reply per case, and what must become of it. The forced strings are short: llama.cpp
# writes them a few grammar-checked tokens per character.
ACCEPTED = "勾股定理的应用"
FILTER_CASES = [
    (pair(exactly(SEED_QUESTION), text(12, 20)), "too_similar"),  # a seed, word for word
    (pair(exactly("看这张图片"), text(12, 20)), "needs_media"),
    (pair(text(6, 12), exactly("作为一个AI语言模型")), "refusal"),
    (pair(exactly("分数？"), text(12, 20)), "too_short"),  # 3 characters < min_instruction_chars 5
    (pair(text(6, 12), text(45, 50)), "too_long"),  # > max_answer_chars 40
    (pair(exactly(ACCEPTED), text(12, 20)), None),
    (pair(exactly(ACCEPTED), text(12, 20)), "too_similar"),  # the pair accepted just before
    (pair(text(6, 12), text(12, 20), answer_key="explanation"), "malformed"),  # no "answer"
]


def test_each_filter_trips_on_a_real_reply(proxy, tmp_path: Path) -> None:
    ws = workspace(
        tmp_path / "pairs", proxy, num_pairs=20, pairs_per_request=len(FILTER_CASES), max_requests=1,
        max_tokens=1000, extra_body={"response_format": reply_schema([schema for schema, _ in FILTER_CASES])},
    )  # fmt: skip
    result = stage(ws)
    assert result.returncode == 0, result.stderr
    rejects = jsonl(ws / paths.SELFINSTRUCT_REJECTS)
    numbers = {int(r["source"].rsplit(" ", 1)[1]): r["reason"] for r in rejects}
    expected = {number: reason for number, (_, reason) in enumerate(FILTER_CASES, 1) if reason}
    assert numbers == expected, rejects
    (accepted,) = jsonl(ws / paths.REVIEW_FILE)
    assert accepted["instruction"] == ACCEPTED
    similar = [r for r in rejects if r["reason"] == "too_similar"]
    assert "data/raw/sft_stem.jsonl:1" in similar[0]["detail"] and accepted["id"] in similar[1]["detail"]
    metrics = json.loads((ws / paths.SELFINSTRUCT_METRICS).read_text())
    assert metrics["stopped_by"] == "max_requests" and metrics["rejected"] == len(expected)

    # a whole reply: cut off at max_tokens, and valid JSON without the "pairs" list the template asks for
    cut = workspace(tmp_path / "cut", proxy, num_pairs=5, max_requests=1, max_tokens=8,
                    extra_body={"response_format": reply_schema(NONSENSE, 5)})  # fmt: skip
    other = {"type": "json_object", "schema": {"type": "object", "properties": {"questions": text(5, 10)}}}
    shape = workspace(tmp_path / "shape", proxy, num_pairs=5, max_requests=1, extra_body={"response_format": other})
    for folder, reason in ((cut, "truncated"), (shape, "malformed")):
        result = stage(folder)
        assert result.returncode == 0, result.stderr
        (reject,) = jsonl(folder / paths.SELFINSTRUCT_REJECTS)
        assert reject["reason"] == reason and "reply" in reject["row"], reject
        assert jsonl(folder / paths.REVIEW_FILE) == []


def test_a_killed_run_resumes_from_the_cache_without_repeating_a_request(proxy, tmp_path: Path) -> None:
    ws = workspace(
        tmp_path, proxy, num_pairs=6, pairs_per_request=1, round_size=3, concurrency=1, max_requests=10,
        extra_body={"response_format": reply_schema(NONSENSE, 1)},
    )  # fmt: skip
    cache_file = ws / paths.RESPONSE_CACHE
    run = subprocess.Popen([sys.executable, "-m", "stages.selfinstruct"], cwd=ws, env=env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    while len(whole_lines(cache_file)) < 2:
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    answered = {sent(entry["request"]) for entry in whole_lines(cache_file)}
    sent_before = len(proxy.bodies)
    assert not (ws / paths.REVIEW_FILE).exists()  # killed: no outputs but the cache

    resumed = stage(ws)
    assert resumed.returncode == 0, resumed.stderr
    second = [sent(body) for body in proxy.bodies[sent_before:]]
    assert not answered & set(second), "a request whose reply was cached went out again"
    assert f"{len(second)} requests sent" in resumed.stderr
    assert f"{len(answered)} replies from the cache" in resumed.stderr
    cache = jsonl(cache_file)
    metrics = json.loads((ws / paths.SELFINSTRUCT_METRICS).read_text())
    assert metrics["replies"] == len(cache) == len(answered | set(second)) and len(jsonl(ws / paths.REVIEW_FILE)) >= 6


def test_the_budget_stops_the_run_cleanly(proxy, tmp_path: Path) -> None:
    ws = workspace(tmp_path, proxy, num_pairs=50, pairs_per_request=1, max_total_tokens=1,
                   extra_body={"response_format": reply_schema(NONSENSE, 1)})  # fmt: skip
    result = stage(ws)
    assert result.returncode == 0, result.stderr
    assert "budget max_total_tokens reached after 2 replies" in result.stderr
    assert "(stopped by max_total_tokens)" in result.stdout
    metrics = json.loads((ws / paths.SELFINSTRUCT_METRICS).read_text())
    assert metrics["stopped_by"] == "max_total_tokens" and metrics["replies"] == 2 == len(proxy.bodies)
    assert len(jsonl(ws / paths.REVIEW_FILE)) == metrics["accepted"] <= 2


# ------------------------------------------------------------------------- the loop, through DVC


def test_the_default_pipeline_ran_the_stage_off(pipeline_repo: Path) -> None:
    lock = yaml.safe_load((pipeline_repo / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    assert lock["selfinstruct"]["params"]["params.yaml"]["selfinstruct"]["enabled"] is False
    assert (pipeline_repo / paths.REVIEW_FILE).read_bytes() == b""
    assert json.loads((pipeline_repo / paths.SELFINSTRUCT_METRICS).read_text())["stopped_by"] == "disabled"
    prepare = json.loads((pipeline_repo / paths.PREPARE_SOURCES).read_text())
    assert str(paths.REVIEW_FILE) not in prepare["sources"]


def dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env={**env(), "DVC_NO_ANALYTICS": "1"},
                            capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_generate_review_and_prepare_through_dvc(pipeline_repo: Path, proxy, tmp_path: Path) -> None:
    """In a copy of the pipeline's repo: `dvc repro prepare` generates, a person reviews (the command, keys
    on stdin), `dvc repro prepare` again sends nothing (cache) and prepare keeps exactly the accepted pairs."""
    repo = tmp_path / "repo"
    shutil.copytree(pipeline_repo, repo, symlinks=True)  # with DVC's cache: an output not in it reruns its stage
    schema = {"response_format": reply_schema(NONSENSE, 2)}
    params = with_selfinstruct(repo / "params.yaml", proxy, num_pairs=4, pairs_per_request=2, extra_body=schema)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")

    dvc(repo, "repro", "prepare")
    rows = jsonl(repo / paths.REVIEW_FILE)
    requests_made = len(proxy.bodies)
    assert len(rows) >= 4 and requests_made >= 2
    keys = "a\nr\nnot for teaching\na\n" + "s\n" * (len(rows) - 3)  # accept, reject (a note), accept, skip
    review = subprocess.run([sys.executable, "-m", "tools.review"], cwd=repo, env=env(), input=keys,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert review.returncode == 0, review.stderr
    assert [r["status"] for r in jsonl(repo / paths.REVIEW_FILE)][:3] == ["accepted", "rejected", "accepted"]

    status = dvc(repo, "status").stdout
    assert "selfinstruct" in status and "modified:" in status  # the decisions changed the stage's output
    dvc(repo, "repro", "prepare")
    assert len(proxy.bodies) == requests_made, "the rerun after review must come from the cache"
    reviewed = jsonl(repo / paths.REVIEW_FILE)
    assert [r["status"] for r in reviewed][:3] == ["accepted", "rejected", "accepted"]  # kept by the stage
    prepared = jsonl(repo / paths.SFT_TRAIN) + jsonl(repo / paths.SFT_EVAL)
    taken = sorted(
        row["messages"][1]["content"] for row in prepared if row["source"].startswith(str(paths.REVIEW_FILE))
    )
    assert taken == sorted(r["instruction"] for r in reviewed if r["status"] == "accepted")
    source = json.loads((repo / paths.PREPARE_SOURCES).read_text())["sources"][str(paths.REVIEW_FILE)]
    assert source["kept"] == 2 and source["rejected"] == {"review_pending": len(rows) - 3, "review_rejected": 1}
    origin = f"ta-lora @ {proxy.base_url}, templates {load_templates('zh', REPO / 'prompts/selfinstruct').digest}"
    assert source["provenance"][f"{origin}: accepted"] == {"rows_in": 2, "kept": 2}
    assert dvc(repo, "status", "prepare").stdout.strip().endswith("up to date.")
