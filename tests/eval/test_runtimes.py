"""How eval scores and generates (ta/eval/runtimes.py): the tokens of assistant turns only, from ids the base
tokenizer made once; transformers in padded batches exactly as one sequence at a time."""

from __future__ import annotations

import pytest

from ta.eval.runtimes import HFRuntime, encode_conversation, encode_prompt, scored_logprobs
from tests.helpers import char_tokenizer

ALPHABET = "systemuserassistant\nqab12+34=7答案：作为AI语言模型"


@pytest.fixture(scope="module")
def tokenizer():
    """One token per character (BPE with no merges), ChatML specials, the Qwen2 template's layout."""
    return char_tokenizer([ALPHABET])


def scored_tokens(tokenizer, encoded):
    return [tokenizer.convert_ids_to_tokens(i) for i, s in zip(encoded.ids, encoded.scored, strict=True) if s]


def test_only_assistant_turns_are_scored(tokenizer):
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "ab"},
    ]
    encoded = encode_conversation(tokenizer, messages)
    # the answer and its end-of-turn token; not the prompt, not the template's final newline
    assert scored_tokens(tokenizer, encoded) == ["a", "b", "<|im_end|>"]
    assert tokenizer.convert_ids_to_tokens(encoded.ids[-1]) == "\n"  # the template's last token, unscored


def test_every_assistant_turn_of_a_dialogue_is_scored(tokenizer):
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "qq"},
        {"role": "assistant", "content": "b"},
    ]
    encoded = encode_conversation(tokenizer, messages)
    assert scored_tokens(tokenizer, encoded) == ["a", "<|im_end|>", "b", "<|im_end|>"]


def test_prompt_ids_end_with_the_generation_prompt(tokenizer):
    ids = encode_prompt(tokenizer, [{"role": "user", "content": "q"}])
    assert tokenizer.convert_ids_to_tokens(ids)[-11:] == ["<|im_start|>", *"assistant", "\n"]


def test_scored_logprobs_are_those_of_the_scored_tokens_in_order() -> None:
    from ta.eval.runtimes import Encoded

    class Counting:
        def token_logprobs(self, sequences):  # log p of token i is -i, for i = 1 ..
            return [[-float(i) for i in range(1, len(ids))] for ids in sequences]

    encoded = Encoded([9, 9, 9, 9, 9], [False, False, True, False, True])
    assert scored_logprobs(Counting(), [encoded]) == [[-2.0, -4.0]]


@pytest.fixture(scope="module")
def tiny_lm():
    """A randomly initialised one-layer Qwen2: enough to check that batching changes no number."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    return Qwen2ForCausalLM(config).eval()


def test_padded_batches_score_like_single_sequences(tiny_lm):
    sequences = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    batched = HFRuntime(tiny_lm, pad_id=0, batch_size=3).token_logprobs(sequences)
    single = HFRuntime(tiny_lm, pad_id=0, batch_size=1).token_logprobs(sequences)
    assert [len(lps) for lps in batched] == [5, 1, 2]  # one log-prob per predicted token
    for b, s in zip(batched, single, strict=True):
        assert b == pytest.approx(s, abs=1e-5)
    assert all(lp < 0 for lps in batched for lp in lps)


def test_logprobs_in_sorted_chunked_batches_equal_a_float64_log_softmax_per_sequence(tiny_lm, monkeypatch):
    """Batches sorted by length, fp32 logsumexp over chunks of 2 positions: the callers' order and the values of
    a plain float64 log-softmax over each sequence alone."""
    import torch

    monkeypatch.setattr(HFRuntime, "LOGPROB_CHUNK", 2)
    sequences = [[11, 12], [5, 6, 7, 8, 9, 10], [13, 14, 15], [16, 17, 18, 19, 20]]
    got = HFRuntime(tiny_lm, pad_id=0, batch_size=2).token_logprobs(sequences)
    for ids, lps in zip(sequences, got, strict=True):
        with torch.no_grad():
            logits = tiny_lm(input_ids=torch.tensor([ids])).logits[0, :-1].double()
        expected = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert lps == pytest.approx(expected.tolist(), abs=1e-5)


def test_batches_go_longest_first_and_results_come_back_in_order(tiny_lm):
    runtime = HFRuntime(tiny_lm, pad_id=0, batch_size=2)
    sequences = [[1], [1, 2, 3], [1, 2], [1, 2, 3, 4]]
    assert list(runtime._batches(sequences)) == [[3, 1], [2, 0]]
    prompts = [[5, 6], [9, 10, 11, 12], [7]]
    assert runtime.greedy(prompts, 4, stop_ids={1}) == [runtime.greedy([p], 4, stop_ids={1})[0] for p in prompts]


def test_left_padded_greedy_matches_one_prompt_at_a_time(tiny_lm):
    prompts = [[5, 6, 7, 8], [9, 10]]
    batched = HFRuntime(tiny_lm, pad_id=0, batch_size=2).greedy(prompts, 6, stop_ids={1})
    single = HFRuntime(tiny_lm, pad_id=0, batch_size=1).greedy(prompts, 6, stop_ids={1})
    assert batched == single
    assert all(len(ids) <= 6 and 1 not in ids for ids in batched)


def test_transformers_and_llama_cpp_score_the_same_ids_alike(reduced_repo) -> None:
    """The merged model and its f16 GGUF from the pipeline, given the same ids: per-token log-probs agree to
    f16 rounding, and greedy answers are the same tokens."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from ta.eval.evaluate import stop_token_ids
    from ta.eval.runtimes import LlamaCppRuntime
    from ta.models import load_tokenizer

    merged = reduced_repo / "models/merged"
    tokenizer = load_tokenizer(merged)
    rows = (reduced_repo / "data/prepared/sft_eval.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    encoded = [encode_conversation(tokenizer, json.loads(row)["messages"]) for row in rows]
    prompts = [encode_prompt(tokenizer, json.loads(row)["messages"][:-1]) for row in rows]
    hf = HFRuntime(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), tokenizer.pad_token_id, 4)
    n_ctx = max(len(e.ids) for e in encoded) + 32
    llama = LlamaCppRuntime(reduced_repo / "models/gguf/teachingassistant-f16.gguf", n_ctx=n_ctx, n_threads=1)
    try:
        for hf_logprobs, llama_logprobs, e in zip(
            scored_logprobs(hf, encoded), scored_logprobs(llama, encoded), encoded, strict=True
        ):
            assert len(hf_logprobs) == len(llama_logprobs) == sum(e.scored) > 0
            assert max(abs(a - b) for a, b in zip(hf_logprobs, llama_logprobs, strict=True)) < 0.05
            assert abs(sum(hf_logprobs) - sum(llama_logprobs)) / len(hf_logprobs) < 0.01
        stops = stop_token_ids(tokenizer)
        assert hf.greedy(prompts, 12, stops) == llama.greedy(prompts, 12, stops)
    finally:
        llama.llm.close()
