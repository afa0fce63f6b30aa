"""Self-Instruct with human review: new instruction/answer pairs from a strong model, filtered, reviewed.

seeds (the seed pairs, read with ta/data) -> prompts (topics, few-shot examples, the user's templates) ->
client (one request through the openai SDK, its retries) with cache (replies by request key) -> filters
(the paper's: malformed, truncated, length, media, refusal, ROUGE-L novelty from rouge) -> generate (rounds,
concurrency, budget, progress) -> review (the git-tracked review file, decisions, merge) -> run (the stage).
"""
