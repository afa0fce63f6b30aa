"""Self-Instruct generation: rounds of requests, sent concurrently, each reply filtered in request order,
until `num_pairs` pairs have passed the filters or the budget is spent.

Why rounds: the few-shot pool grows with the pairs accepted so far (the paper's bootstrap), and for a
rerun to build the very same requests, what a request shows may depend only on replies that are certain
when it is built. Request i of round r sees the seeds and what rounds < r accepted; inside a round the
requests go out together (at most `concurrency` in flight) and their replies are judged in request order,
so the novelty pool (ROUGE-L) also catches two similar pairs from the same round. Changing `concurrency`
changes nothing but speed.

The budget counts every reply the run uses, cached or not: a rerun then stops at the same place and
writes the same files (and costs nothing). `max_requests` also caps a round; the token budget is checked
between rounds, so a run may pass it by at most one round's tokens.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from ta.config import SelfInstruct
from ta.errors import SelfInstructError
from ta.selfinstruct.cache import ResponseCache, request_key
from ta.selfinstruct.client import ChatClient, request_body
from ta.selfinstruct.filters import PairFilters, Reply, Verdict, item_pair, reply_items
from ta.selfinstruct.prompts import Example, RequestPlan, Templates, plan_request, request_messages, topics
from ta.selfinstruct.rouge import InstructionPool, Nearest
from ta.selfinstruct.seeds import Pair

log = logging.getLogger("selfinstruct")


@dataclass(frozen=True)
class Generated:
    """A pair that passed every filter, on its way to review."""

    id: str
    instruction: str
    answer: str
    subject: str
    difficulty: str
    nearest: Nearest | None
    request: str  # the request key: the reply is in the response cache under it


@dataclass(frozen=True)
class Dropped:
    """A reply or pair a filter dropped: the rejects file's row."""

    source: str  # "request <key> [pair <n>]"
    reason: str
    detail: str
    row: Any  # the pair as generated, or the reply's text


@dataclass
class Spend:
    replies: int = 0  # replies used by the run (the budget's count), cached or not
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sent: int = 0  # requests sent to the endpoint in this run
    sent_tokens: int = 0  # their tokens: what this run cost
    cached: int = 0  # replies found in the cache

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Generation:
    accepted: list[Generated] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    spend: Spend = field(default_factory=Spend)
    stopped_by: str = "num_pairs"  # num_pairs | max_requests | max_total_tokens


def generate(
    params: SelfInstruct,
    refusal_patterns: list[str],
    seeds: list[Pair],
    templates: Templates,
    cache: ResponseCache,
    make_client: Callable[[SelfInstruct], ChatClient] = ChatClient,
) -> Generation:
    from tqdm import tqdm

    run = Generation()
    pool = InstructionPool()
    for seed in seeds:
        pool.add(seed.instruction, seed.source)
    filters = PairFilters(params, refusal_patterns, pool)
    order, examples, index = topics(params), [], 0
    fetcher = Fetcher(params, cache, make_client, run.spend)
    with tqdm(total=params.num_pairs, desc="selfinstruct", unit=" pairs", disable=None) as progress:
        fetcher.progress = progress
        try:
            while len(run.accepted) < params.num_pairs:
                size = round_size(params, run)
                if not size:
                    break
                plans = [plan_request(index + j, params, order, seeds, examples) for j in range(size)]
                index += size
                bodies = [request_body(params, request_messages(p, params, templates), p.sampling_seed) for p in plans]
                for plan, key, reply in zip(plans, *fetcher.fetch(bodies), strict=True):
                    for pair in judge(plan, key, reply, filters, run):
                        examples.append(Example(pair.instruction, pair.answer, plan.subject))
                        progress.update(1)
                fetcher.show(run)
        finally:
            fetcher.close()
    if run.stopped_by != "num_pairs":
        log.warning(
            "budget %s reached after %d replies and %d tokens: %d of %d pairs",
            run.stopped_by,
            run.spend.replies,
            run.spend.tokens,
            len(run.accepted),
            params.num_pairs,
        )
    return run


def round_size(params: SelfInstruct, run: Generation) -> int:
    """Requests in the next round: enough for the pairs still wanted, within round_size and the budget;
    0 when the budget is spent (run.stopped_by then says which)."""
    if run.spend.replies >= params.max_requests:
        run.stopped_by = "max_requests"
        return 0
    if run.spend.tokens >= params.max_total_tokens:
        run.stopped_by = "max_total_tokens"
        return 0
    wanted = -(-(params.num_pairs - len(run.accepted)) // params.pairs_per_request)
    return min(params.round_size, wanted, params.max_requests - run.spend.replies)


def judge(plan: RequestPlan, key: str, reply: Reply, filters: PairFilters, run: Generation) -> list[Generated]:
    """Filter one reply's pairs in order; the accepted ones join the novelty pool at once."""
    run.spend.replies += 1
    run.spend.prompt_tokens += reply.prompt_tokens
    run.spend.completion_tokens += reply.completion_tokens
    items, verdict = reply_items(reply)
    if verdict is not None:
        run.dropped.append(Dropped(f"request {key[:16]}", verdict.reason, verdict.detail, {"reply": reply.content}))
    accepted = []
    for number, item in enumerate(items, 1):
        source = f"request {key[:16]} pair {number}"
        pair = item_pair(item)
        if isinstance(pair, Verdict):
            run.dropped.append(Dropped(source, pair.reason, pair.detail, item))
            continue
        instruction, answer = pair
        verdict, nearest = filters.check(instruction, answer)
        if verdict is not None:
            row = {"instruction": instruction, "answer": answer}
            run.dropped.append(Dropped(source, verdict.reason, verdict.detail, row))
            continue
        pair_id = "si-" + hashlib.sha256(f"{key}#{number}".encode()).hexdigest()[:16]
        generated = Generated(pair_id, instruction, answer, plan.subject, plan.difficulty, nearest, key)
        filters.pool.add(instruction, pair_id)
        run.accepted.append(generated)
        accepted.append(generated)
    return accepted


class Fetcher:
    """Replies for a round's requests: from the cache, else from the endpoint, at most `concurrency` in
    flight; each reply is cached the moment it arrives. The client is made only when something is missing,
    so a fully cached rerun needs neither the server nor the key."""

    def __init__(
        self,
        params: SelfInstruct,
        cache: ResponseCache,
        make_client: Callable[[SelfInstruct], ChatClient],
        spend: Spend,
    ) -> None:
        self.params, self.cache, self.make_client, self.spend = params, cache, make_client, spend
        self.client: ChatClient | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.progress: Any = None

    def fetch(self, bodies: list[dict[str, Any]]) -> tuple[list[str], list[Reply]]:
        keys = [request_key(self.params.base_url, body) for body in bodies]
        replies: list[Reply | None] = [self.cache.get(key) for key in keys]
        missing = [i for i, reply in enumerate(replies) if reply is None]
        self.spend.cached += len(keys) - len(missing)
        if missing:
            if self.client is None:
                self.client = self.make_client(self.params)
                self.executor = ThreadPoolExecutor(min(self.params.concurrency, self.params.round_size))
            assert self.executor is not None
            futures = {self.executor.submit(self.client.complete, bodies[i]): i for i in missing}
            error: SelfInstructError | None = None
            for future in as_completed(futures):  # every reply that arrives is cached, even after an error
                i = futures[future]
                try:
                    reply = future.result()
                except SelfInstructError as err:
                    error = error or err
                    continue
                self.cache.put(keys[i], self.params.base_url, bodies[i], reply)
                replies[i] = reply
                self.spend.sent += 1
                self.spend.sent_tokens += reply.tokens
            if error is not None:
                raise SelfInstructError(f"{error}; the {self.spend.sent} replies received are cached, rerun to resume")
        return keys, [reply for reply in replies if reply is not None]

    def show(self, run: Generation) -> None:
        if self.progress is not None:
            s = run.spend
            self.progress.set_postfix_str(
                f"rejected {len(run.dropped)}, replies {s.replies} ({s.cached} cached), "
                f"tokens {s.tokens:,}, spent {s.sent} requests/{s.sent_tokens:,} tokens"
            )

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
