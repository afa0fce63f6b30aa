"""LLM-as-judge: verdict parsing by hand, and a real round trip through llama.cpp's OpenAI-compatible server."""

import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import requests

from stages import judge


def test_verdict_score_maps_grades_to_unit_interval():
    # mean (4 + 5 + 3) / 3 = 4 -> (4 - 1) / 4 = 0.75; all 1 -> 0; all 5 -> 1
    assert judge.Verdict(4, 5, 3).score == pytest.approx(0.75)
    assert judge.Verdict(1, 1, 1).score == 0.0
    assert judge.Verdict(5, 5, 5).score == 1.0


def test_parse_verdict_reads_the_first_json_object():
    reply = '评分如下：{"correct": 2, "clear": 3, "pedagogical": 4} 以上。'
    assert judge.parse_verdict(reply) == judge.Verdict(2, 3, 4)


@pytest.mark.parametrize(
    "reply",
    [
        "很好，给 5 分",  # no JSON
        '{"correct": 6, "clear": 3, "pedagogical": 4}',  # out of range
        '{"correct": 4, "clear": 3}',  # a criterion missing
        '{"correct": "4", "clear": 3, "pedagogical": 4}',  # a string, not a grade
        '{"correct": true, "clear": 3, "pedagogical": 4}',  # bool is not a grade
        "{not json}",
    ],
)
def test_parse_verdict_refuses_to_guess(reply):
    assert judge.parse_verdict(reply) is None


def test_judge_messages_carry_question_reference_and_answer():
    system, user = judge.judge_messages("1+1=?", "答案：2", "")
    assert system["role"] == "system" and "pedagogical" in system["content"]
    assert "1+1=?" in user["content"] and "答案：2" in user["content"] and "（空）" in user["content"]


def test_unreachable_endpoint_is_a_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    with pytest.raises(judge.JudgeError, match=f"127.0.0.1:{port}/v1/chat/completions: judge endpoint unreachable"):
        judge.ask_judge(f"http://127.0.0.1:{port}/v1", "ta", [{"role": "user", "content": "hi"}], None, timeout_s=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def judge_server(q4_gguf):
    """llama.cpp's server on loopback, serving the pipeline's q4_k_m GGUF under an API key."""
    port, key = _free_port(), "test-judge-key"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(q4_gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model_alias",
        "ta-lora",
        "--api_key",
        key,
        "--n_threads",
        "2",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {server.stderr.read()[-2000:]}")
            try:
                if requests.get(f"{base_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not come up within 90 s")
            time.sleep(0.5)
        yield SimpleNamespace(base_url=base_url, key=key)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_judge_round_trip_through_llama_cpp_server(judge_server, monkeypatch):
    # JSON mode with the verdict schema becomes a grammar in llama.cpp: even the tiny model must answer
    # with three grades 1..5, so the reply parses and the score lies in [0, 1].
    reply = judge.ask_judge(
        judge_server.base_url, "ta-lora", judge.judge_messages("2 + 3 = ?", "答案：5", "答案：5"), judge_server.key
    )
    assert judge.parse_verdict(reply) is not None, reply

    monkeypatch.setenv("TA_TEST_JUDGE_KEY", judge_server.key)
    params = SimpleNamespace(
        judge_max_samples=1,
        judge_base_url=judge_server.base_url,
        judge_model="ta-lora",
        judge_api_key_env="TA_TEST_JUDGE_KEY",
    )
    task = SimpleNamespace(prompt=[{"role": "user", "content": "2 + 3 = ?"}], reference="答案：5")
    score = judge.judge_score(params, [task, task], ["答案：5", "ignored: beyond judge_max_samples"])
    assert score is not None and 0.0 <= score <= 1.0


def test_judge_sends_the_api_key_from_the_environment(judge_server):
    assert os.environ.get("TA_JUDGE_API_KEY") != judge_server.key
    with pytest.raises(judge.JudgeError, match="HTTP 401"):
        judge.ask_judge(judge_server.base_url, "ta-lora", judge.judge_messages("q", "r", "a"), "wrong-key")
