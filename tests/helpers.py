"""What the tests share, in one place: `from tests.helpers import ...` (fixtures live in the conftest.py files).

- the repository and its tools: REPO, BIN, DVC, run(), repo_env(), copy_repo(), clone_with_results()
- params: params_dict() / write_params(): the shipped params.yaml with some sections changed
- a throwaway training workspace laid out like the repository after `dvc repro prepare`: make_workspace()
  (a one-character-per-token tokenizer, a micro Qwen2, arithmetic conversations and pairs)
- a hand-countable token counter for prepare's filters, and small tokenizers of several kinds
- Relay: a TCP relay in front of a real server that records the requests and can hold a stream back
- MisbehavingServer: an HTTP server that answers as scripted (Answer): errors, non-objects, cut or dripped streams
- the marking rule of the two test tiers (conftest.py applies it)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
FIXTURES = TESTS / "fixtures"
PREPARE_FIXTURES = FIXTURES / "prepare"  # one small file in the layout of each public set
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


# ------------------------------------------------------------------------------------------ the tiers

PIPELINE_MARK = "pipeline"
# Fixtures of tests that run the real pipeline (or need what it produced) or that train for real: a test whose
# fixture closure holds one of them belongs to the full tier. Everything built on `pipeline_repo` (q4_gguf,
# merged_dir, llama_server, results_clone ...) pulls it into the closure, so it is caught too.
PIPELINE_FIXTURES = frozenset({"pipeline_repo", "training_workspace", "dpo_training_workspace"})


def pipeline_reason(fixturenames: Iterable[str], path: Path, tests_root: Path) -> str | None:
    """Why a test belongs to the full tier (`pipeline` marker), or None for the fast tier: it uses a fixture
    of PIPELINE_FIXTURES (directly or through another fixture), or it lives in tests/e2e/."""
    used = sorted(PIPELINE_FIXTURES.intersection(fixturenames))
    if used:
        return f"uses {used[0]}"
    if (tests_root / "e2e") in Path(path).parents:
        return "end-to-end test (tests/e2e)"
    return None


# ---------------------------------------------------------------------------------- repo and commands


def repo_env(**extra: str) -> dict[str, str]:
    """The environment a stage or a DVC command runs in: the venv first on PATH, this checkout's code first
    on the import path (the venv's editable install may point at another checkout), offline."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["DVC_NO_ANALYTICS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update(extra)
    return env


def run(
    cmd: list[str], cwd: Path, timeout: int = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command that must succeed; on failure the assertion carries the ends of its output."""
    result = subprocess.run(cmd, cwd=cwd, env=env or repo_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def run_module(
    module: str, cwd: Path, *args: str, timeout: int = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m module args` in `cwd` with this checkout's code; the result, whatever the exit code."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=env or repo_env(), capture_output=True, text=True, timeout=timeout)


def tracked_files(repo: Path) -> list[str]:
    """Files git tracks plus untracked, non-ignored ones: what a fresh clone (or a commit) would hold."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p and (repo / p).is_file()]


def copy_repo(dest: Path) -> Path:
    """A fresh git repo at `dest` holding the project's files, committed, with DVC initialised and none of the
    results of the last run (dvc.lock, metrics, dvclive): a clone before its first `dvc repro`."""
    for rel in tracked_files(REPO):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    for generated in ("dvc.lock", "metrics", "dvclive"):
        path = dest / generated
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True, env=repo_env())
    if not (dest / ".dvc").is_dir():
        subprocess.run([DVC, "init", "-q"], cwd=dest, check=True, env=repo_env())
    commit_all(dest, "init")
    return dest


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], cwd=repo)
    run([*GIT, "commit", "-q", "-m", message], cwd=repo)


def assert_status_clean(repo: Path) -> None:
    out = run([DVC, "status"], cwd=repo).stdout
    assert out.strip() == "Data and pipelines are up to date.", f"dvc status in {repo}:\n{out}"


def clone_with_results(pipeline_repo: Path, clone: Path) -> Path:
    """A git clone of the pipeline repo with what `dvc repro` produced committed (dvc.lock, metrics,
    dvclive), as a user does after a run. It shares the pipeline's DVC cache, linked rather than copied
    (cache.type hardlink,symlink: what the docs advise for multi-GB checkpoints)."""
    run(["git", "clone", "-q", str(pipeline_repo), str(clone)], cwd=clone.parent)
    for rel in tracked_files(clone):  # the workspace becomes the pipeline's: changed, new and deleted files
        (clone / rel).unlink()
    for rel in tracked_files(pipeline_repo):
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pipeline_repo / rel, clone / rel)
    commit_all(clone, "dvc repro results")
    run([DVC, "cache", "dir", "--local", str(pipeline_repo / ".dvc" / "cache")], cwd=clone)
    run([DVC, "config", "--local", "cache.type", "hardlink,symlink"], cwd=clone)
    run([DVC, "checkout", "-q"], cwd=clone)
    assert_status_clean(clone)
    return clone


def ran_stages(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran, in order."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


# ---------------------------------------------------------------------------------------------- params


def merged(into: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for key, value in overrides.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def params_dict(**sections: Any) -> dict[str, Any]:
    """The shipped params.yaml as data, with `sections` merged in: params_dict(sft={"lora": {"r": 4}})."""
    shipped = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    return merged(shipped, sections)


def write_params(directory: Path, **sections: Any) -> Path:
    """A complete params.yaml in `directory` (the loader has no defaults of its own): the shipped one with
    `sections` merged in."""
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params_dict(**sections), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- files


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tsv_steps(path: Path) -> list[int]:
    """The step column of a DVCLive plot file."""
    return [int(row.split("\t")[0]) for row in path.read_text(encoding="utf-8").splitlines()[1:]]


def tsv_values(path: Path) -> list[float]:
    """The value column of a DVCLive plot file."""
    return [float(row.split("\t")[1]) for row in path.read_text(encoding="utf-8").splitlines()[1:]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------- a throwaway training workspace

SYSTEM = "你是教学助手。"
TRAIN_ROWS = 24
EVAL_ROWS = 4
# Two layers of seven linear layers each: what LoRA's "all-linear" and bitsandbytes' 4-bit loading touch.
MICRO_QWEN2 = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
# A few optimizer steps; everything else as shipped.
WORKSPACE_PARAMS: dict[str, Any] = {
    "lr": 1.0e-2,
    "sft": {
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_seq_len": 96,
        "eval_steps": 2,
        "logging_steps": 1,
        "save_steps": 2,
        "early_stopping_patience": 0,  # on in tests of it only: it needs checkpoints at every eval
        "warmup_ratio": 0.0,
        "train_sampling_strategy": "random",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    },
    "dpo": {
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "max_length": 96,
        "eval_steps": 2,
        "logging_steps": 1,
        "save_steps": 2,
        "learning_rate": 1.0e-3,
        "warmup_ratio": 0.0,
    },
}


def conversation(a: int, b: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"计算 {a} + {b} 等于多少？"},
        {"role": "assistant", "content": f"{a} + {b} = {a + b}。\n答案：{a + b}"},
    ]


def sft_rows(n: int, offset: int) -> list[dict[str, Any]]:
    """n arithmetic conversations; the first has two assistant turns."""
    rows = [{"messages": conversation(offset + i, 2 * i + 1)} for i in range(n)]
    rows[0]["messages"] += [
        {"role": "user", "content": "再加 1 呢？"},
        {"role": "assistant", "content": f"再加 1 得 {offset + 2}。\n答案：{offset + 2}"},
    ]
    return rows


def pref_rows(n: int, offset: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        prompt, right = conversation(offset + i, i + 3)[:2], conversation(offset + i, i + 3)[2]
        wrong = {"role": "assistant", "content": f"答案：{offset + 2 * i}"}
        rows.append({"prompt": prompt, "chosen": [right], "rejected": [wrong]})
    return rows


def char_tokenizer(alphabet: Iterable[str]) -> Any:
    """One token per character (BPE without merges), the ChatML special tokens, the ChatML template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from ta import chat

    characters = sorted(set("".join(alphabet)) | set("systemuserassistant\n"))
    vocab = {token: i for i, token in enumerate(chat.SPECIAL_TOKENS + characters)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.decoder = decoders.Fuse()  # ids back to text without separators
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=chat.IM_END,
        pad_token=chat.END_OF_TEXT,
        additional_special_tokens=[chat.IM_START],
    )
    tokenizer.chat_template = chat.CHATML_TEMPLATE
    return tokenizer


def build_base(out_dir: Path, texts: Iterable[str]) -> None:
    """models/base as the base stage leaves it for `tiny`: a random micro Qwen2, the character tokenizer,
    base.json."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ta import chat

    tokenizer = char_tokenizer(texts)
    tokenizer.save_pretrained(str(out_dir))
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(vocab),
        eos_token_id=vocab[chat.IM_END],
        pad_token_id=vocab[chat.END_OF_TEXT],
        bos_token_id=None,
        **MICRO_QWEN2,
    )
    Qwen2ForCausalLM(config).save_pretrained(str(out_dir))
    (out_dir / "base.json").write_text(json.dumps({"model": "tiny", "revision": None, "trust_remote_code": False}))


def set_params(workspace: Path, **sections: Any) -> None:
    """The workspace's params.yaml: shipped params, WORKSPACE_PARAMS, then `sections` (e.g. sft={...}, lr=0.1)."""
    write_params(workspace, **merged(WORKSPACE_PARAMS, sections))


def make_workspace(
    root: Path,
    train: list[dict[str, Any]] | None = None,
    evals: list[dict[str, Any]] | None = None,
    extra_texts: Iterable[str] = (),
) -> Path:
    """A directory laid out like the repository after `dvc repro prepare`, with a micro model as the base."""
    train = train if train is not None else sft_rows(TRAIN_ROWS, 10)
    evals = evals if evals is not None else sft_rows(EVAL_ROWS, 60)
    prefs_train, prefs_eval = pref_rows(8, 20), pref_rows(4, 70)
    write_jsonl(root / "data/prepared/sft_train.jsonl", train)
    write_jsonl(root / "data/prepared/sft_eval.jsonl", evals)
    write_jsonl(root / "data/prepared/pref_train.jsonl", prefs_train)
    write_jsonl(root / "data/prepared/pref_eval.jsonl", prefs_eval)
    texts = [m["content"] for row in train + evals for m in row["messages"]]
    texts += [m["content"] for row in prefs_train + prefs_eval for m in row["rejected"]]
    build_base(root / "models/base", [*texts, *extra_texts])
    shutil.copy(REPO / "ds_config_zero2.json", root / "ds_config_zero2.json")
    set_params(root)
    return root


def make_sft_adapter(workspace: Path) -> None:
    """models/sft: a LoRA adapter over the base with random A and B (PEFT's zero B would equal the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ta.models import copy_tokenizer_files, save_model

    base = AutoModelForCausalLM.from_pretrained(str(workspace / "models/base"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    save_model(get_peft_model(base, config), workspace / "models/sft")
    copy_tokenizer_files(workspace / "models/base", workspace / "models/sft")


def copy_workspace(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


# --------------------------------------------------------------------------------- prepare's token counts

TOKEN = re.compile(r"[\u4e00-\u9fff]|\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Each CJK character, each run of letters or digits and each other symbol is one token."""
    return len(TOKEN.findall(text))


def count_chat_tokens(messages: list[dict[str, str]]) -> int:
    """A templated message costs 3 tokens more than its content (start, role, end)."""
    return sum(count_tokens(m["content"]) + 3 for m in messages)


def hand_counter() -> Any:
    from ta import chat
    from ta.data.tokens import TokenCounter

    return TokenCounter(count_tokens, count_chat_tokens, chat.SPECIAL_TOKENS)


def prepare_params(**overrides: Any) -> Any:
    """params `prepare` as shipped, with `overrides` (a Prepare dataclass, validated like params.yaml)."""
    import dataclasses

    from ta.config import load_params, validated

    shipped = load_params(REPO / "params.yaml").prepare
    return validated(dataclasses.replace(shipped, **overrides), "test", "prepare")


# ----------------------------------------------------------------------------- tokenizers of several kinds

TOKENIZER_CORPUS = [
    "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程，它为几乎所有生命提供能量。",
    "What is the derivative of x squared?",
    "解方程 2x + 5 = 17。",
    "你是教学助手。",
] * 20
TOKENIZER_KINDS = ("sentencepiece", "byte_level_nfc", "metaspace", "nfkc_whitespace")


def build_tokenizer(kind: str, path: Path) -> Path:
    """A small tokenizer saved like models/base, with the ChatML template. sentencepiece: the tiny base's
    layout (Prepend + Replace normaliser, byte fallback); byte_level_nfc: Qwen2's (NFC, byte-level BPE);
    metaspace: spaces replaced by the pre-tokenizer (Llama/Mistral conversions);
    nfkc_whitespace: a normaliser and pre-tokenizer the token bounds do not cover (everything counted)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ta.chat import CHATML_TEMPLATE, SPECIAL_TOKENS

    special = ["<unk>", *SPECIAL_TOKENS]
    if kind == "sentencepiece":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.decoder = decoders.ByteFallback()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special)
    elif kind == "byte_level_nfc":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    elif kind == "metaspace":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special)
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special)
    tokenizer.train_from_iterator(TOKENIZER_CORPUS, trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", chat_template=CHATML_TEMPLATE
    ).save_pretrained(str(path))
    return path


def exact_counts(tokenizer_dir: Path, messages: list[dict[str, str]]) -> tuple[int, int]:
    """(tokens of the joined contents, tokens of the templated conversation), by transformers itself."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    templated = tokenizer.apply_chat_template(messages, tokenize=False)
    plain = "\n".join(m["content"] for m in messages)
    return (
        len(tokenizer(plain, add_special_tokens=False)["input_ids"]),
        len(tokenizer(templated, add_special_tokens=False)["input_ids"]),
    )


# ------------------------------------------------------------------------------------------- the relay


class Relay:
    """A TCP relay on 127.0.0.1 in front of a real server, for checks the server itself cannot report.

    It records every request as the server received it (`requests`: head and body). With
    `hold_after_first_piece`, it passes a chunked (streamed) response on one HTTP chunk at a time and, once a
    chunk carrying the first piece of text has gone out, holds the rest back until `piece_seen` is set (the
    client's on_text does that) or `hold_s` passes. A client that streams hands that piece on while the rest
    is held; one that reads the whole answer first cannot: `held_in_vain` then says so. `held` says the
    gate was reached at all (more came after the first piece)."""

    FIRST_PIECE = re.compile(rb'"content":\s*"[^"]')

    def __init__(self, target_port: int, hold_after_first_piece: bool = False, hold_s: float = 10.0) -> None:
        self.target_port = target_port
        self.hold = hold_after_first_piece
        self.hold_s = hold_s
        self.piece_seen = threading.Event()
        self.held = False
        self.held_in_vain = False
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.target_port))
        self.requests.append(b"")
        index = len(self.requests) - 1

        def upstream() -> None:
            try:
                while data := client.recv(65536):
                    self.requests[index] += data
                    server.sendall(data)
            except OSError:
                pass

        threading.Thread(target=upstream, daemon=True).start()
        try:
            self._downstream(server, client)
        except OSError:
            pass
        finally:
            client.close()
            server.close()

    def _downstream(self, server: socket.socket, client: socket.socket) -> None:
        buffer, chunked, sent_piece = bytearray(), None, False
        while data := server.recv(65536):
            buffer += data
            if chunked is None:  # the response head: passed on as it is
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head = bytes(buffer[: end + 4])
                chunked = self.hold and b"transfer-encoding: chunked" in head.lower()
                client.sendall(head)
                del buffer[: end + 4]
            if not chunked:
                client.sendall(bytes(buffer))
                buffer.clear()
                continue
            while (line_end := buffer.find(b"\r\n")) >= 0:  # one whole chunk at a time: size, data, CRLF
                size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
                whole = line_end + 2 + size + 2
                if len(buffer) < whole:
                    break
                chunk = bytes(buffer[:whole])
                del buffer[:whole]
                if sent_piece and not self.held_in_vain:  # the gate: nothing more until the first piece is out
                    self.held = True
                    if not self.piece_seen.wait(self.hold_s):
                        self.held_in_vain = True  # waited once in vain: let the rest through
                client.sendall(chunk)
                sent_piece = sent_piece or bool(self.FIRST_PIECE.search(chunk))

    def request_head_and_body(self, index: int = -1) -> tuple[dict[str, str], bytes]:
        """The headers (lower-cased names) and body of a recorded request."""
        head, _, body = self.requests[index].partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        return headers, body

    def close(self) -> None:
        self._listener.close()


# ----------------------------------------------------------------------- a server that misbehaves


@dataclasses.dataclass
class Answer:
    """One scripted HTTP answer. `body` as bytes goes out with a Content-Length; as a list, chunked, one
    chunk each, `delay` seconds before each; `complete=False` then closes the connection before the last
    (empty) chunk, as a server that dies mid-stream does."""

    status: int = 200
    body: bytes | list[bytes] = b""
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    complete: bool = True


def json_answer(status: int, payload: Any, **headers: str) -> Answer:
    return Answer(status, json.dumps(payload, ensure_ascii=False).encode(), headers=headers)


def sse_answer(*events: Any, done: bool = True, **fields: Any) -> Answer:
    """A server-sent-events stream of `events` (JSON values), then `data: [DONE]` unless done=False."""
    chunks = [b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n" for event in events]
    return Answer(body=chunks + ([b"data: [DONE]\n\n"] if done else []), content_type="text/event-stream", **fields)


def ndjson_answer(*objects: Any, **fields: Any) -> Answer:
    """Ollama's stream: one JSON value a line."""
    chunks = [json.dumps(value, ensure_ascii=False).encode() + b"\n" for value in objects]
    return Answer(body=chunks, content_type="application/x-ndjson", **fields)


def chunk_event(content: str | None = None, finish_reason: str | None = None) -> dict[str, Any]:
    """One OpenAI chat.completion.chunk."""
    delta = {"content": content} if content is not None else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [choice]}


class MisbehavingServer:
    """An HTTP server on 127.0.0.1 (threading http.server) that answers each POST with the next of `answers`,
    the last one for ever after, however wrong it is. `requests` records each request's path and JSON body."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, Any]] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.requests.append((self.path, body))
                    answer = server.answers.pop(0) if len(server.answers) > 1 else server.answers[0]
                try:
                    self.answer(answer)
                except OSError:
                    pass  # the client gave up (a deadline): nothing to finish
                self.close_connection = True

            def answer(self, answer: Answer) -> None:
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Connection", "close")
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if isinstance(answer.body, bytes):
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in answer.body:
                    time.sleep(answer.delay)
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                if answer.complete:
                    self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
