"""LLM-as-judge (ta/eval/judge.py): verdicts parsed by hand, and real round trips through llama.cpp's
OpenAI-compatible server (the session's `llama_server`, serving the pipeline's q4_k_m GGUF)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from ta.eval import judge
from tests.helpers import Relay


def test_verdict_score_maps_grades_to_unit_interval() -> None:
    # mean (4 + 5 + 3) / 3 = 4 -> (4 - 1) / 4 = 0.75; all 1 -> 0; all 5 -> 1
    assert judge.Verdict(4, 5, 3).score == pytest.approx(0.75)
    assert judge.Verdict(1, 1, 1).score == 0.0
    assert judge.Verdict(5, 5, 5).score == 1.0


def test_parse_verdict_reads_the_first_json_object() -> None:
    reply = '评分如下：{"correct": 2, "clear": 3, "pedagogical": 4} 以上。{"correct": 5, "clear": 5, "pedagogical": 5}'
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
        "[1, 2, 3]",
    ],
)
def test_parse_verdict_refuses_to_guess(reply: str) -> None:
    assert judge.parse_verdict(reply) is None


def test_judge_messages_carry_question_reference_and_answer() -> None:
    system, user = judge.judge_messages("1+1=?", "答案：2", "")
    assert system["role"] == "system" and "pedagogical" in system["content"]
    assert "1+1=?" in user["content"] and "答案：2" in user["content"] and "（空）" in user["content"]


def test_unreachable_endpoint_is_a_one_line_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    with pytest.raises(judge.JudgeError, match=f"127.0.0.1:{port}/v1/chat/completions: judge endpoint unreachable"):
        judge.ask_judge(f"http://127.0.0.1:{port}/v1", "ta", [{"role": "user", "content": "hi"}], None, timeout_s=5)


def judge_params(base_url: str, key_env: str, samples: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        judge_max_samples=samples, judge_base_url=base_url, judge_model="ta-lora", judge_api_key_env=key_env
    )


TASK = SimpleNamespace(prompt=[{"role": "user", "content": "2 + 3 = ?"}], reference="答案：5")


def test_judge_round_trip_through_llama_cpp_server(llama_server: SimpleNamespace) -> None:
    # JSON mode with the verdict schema becomes a grammar in llama.cpp: even the tiny model must answer
    # with three grades 1..5, so the reply parses and the score lies in [0, 1].
    messages = judge.judge_messages("2 + 3 = ?", "答案：5", "答案：5")
    reply = judge.ask_judge(llama_server.base_url, "ta-lora", messages, llama_server.key)
    verdict = judge.parse_verdict(reply)
    assert verdict is not None, reply
    assert all(1 <= grade <= 5 for grade in (verdict.correct, verdict.clear, verdict.pedagogical))


def test_judge_sends_the_api_key_from_the_environment(
    llama_server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """judge_score reads the key from the variable eval.judge_api_key_env names: the server accepts it, and
    the request it received carried it as a Bearer token; without the variable the server refuses."""
    relay = Relay(llama_server.port)
    try:
        monkeypatch.setenv("TA_TEST_JUDGE_KEY", llama_server.key)
        params = judge_params(relay.base_url, "TA_TEST_JUDGE_KEY", samples=1)
        score, unscored = judge.judge_score(params, [TASK, TASK], ["答案：5", "beyond judge_max_samples"])
        assert score is not None and 0.0 <= score <= 1.0 and unscored == 0
        assert len(relay.requests) == 1  # judge_max_samples
        headers, body = relay.request_head_and_body()
        assert headers["authorization"] == f"Bearer {llama_server.key}"
        request = json.loads(body)
        assert request["model"] == "ta-lora" and request["response_format"]["schema"] == judge.VERDICT_SCHEMA

        monkeypatch.delenv("TA_TEST_JUDGE_KEY")
        assert judge.judge_score(params, [TASK], ["答案：5"]) == (None, 1)  # refused (HTTP 401): unscored
        assert "authorization" not in relay.request_head_and_body()[0]
    finally:
        relay.close()


def completion(content: object) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


# What a judge endpoint may send back, one reply per request, in order: (HTTP status, body).
REPLIES = [
    (200, completion('{"correct": 5, "clear": 5, "pedagogical": 5}')),  # the one good verdict: score 1.0
    (200, b"<html>502 Bad Gateway</html>"),  # not JSON
    (200, b'{"choices": []}'),  # no choice
    (200, b'{"error": {"message": "overloaded"}}'),  # an error object, no choices
    (200, completion({"correct": 5})),  # content that is not text
    (200, completion("很好，给 5 分")),  # text that is not a verdict
    (500, b"internal error"),
    (200, completion('{"correct": 1, "clear": 1, "pedagogical": 1}')),  # score 0.0
]


class ScriptedJudge(BaseHTTPRequestHandler):
    """Answers the request about answer `<i>号回答` with REPLIES[i], however often it is asked (the client retries
    a 500: each retry gets the same 500)."""

    replies: list[tuple[int, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = " ".join(str(m.get("content")) for m in request["messages"])
        index = next(i for i in range(len(self.replies)) if f"{i}号回答" in text)
        status, body = self.replies[index]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_broken_judge_reply_costs_only_its_sample(caplog: pytest.LogCaptureFixture) -> None:
    """A real HTTP server answering each request with the next of REPLIES: the two verdicts are scored, each
    broken reply leaves its own sample unscored (logged), and nothing is raised."""
    ScriptedJudge.replies = list(REPLIES)
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        params = judge_params(f"http://127.0.0.1:{server.server_address[1]}/v1", "TA_TEST_NO_KEY", len(REPLIES))
        answers = [f"{i}号回答：5" for i in range(len(REPLIES))]
        score, unscored = judge.judge_score(params, [TASK] * len(REPLIES), answers)
    finally:
        server.shutdown()
    assert (score, unscored) == (0.5, 6)  # the mean of 1.0 and 0.0; six samples unscored
    assert "judge: 6 of 8 answers unscored" in caplog.text
    assert "sample 2 unscored: " in caplog.text and "not a chat completion" in caplog.text
    assert "sample 7 unscored: " in caplog.text and "HTTP 500" in caplog.text
