"""Stage `selfinstruct` (off by default): new teaching pairs from a strong model, for a person to review.

Reads   params `selfinstruct` (endpoint, model, key variable name, seeds, subjects, budget, filters) and
        prepare.refusal_patterns; the seed sources (data/raw/sft_*.jsonl by default); the prompt templates
        prompts/selfinstruct/<language>/{system,user}.txt; data/selfinstruct/review.jsonl (decisions kept);
        data/selfinstruct/responses.jsonl (replies already paid for).
Writes  data/selfinstruct/review.jsonl     git-tracked: every generated pair, pending until a person decides
                                           (python -m tools.review); prepare reads it when enabled
        data/selfinstruct/responses.jsonl  the response cache, keyed by the full request
        data/selfinstruct/rejects.jsonl    every reply or pair the filters dropped: where, reason, detail, row
        metrics/selfinstruct.json          replies and tokens used, accepted, rejected per reason, review status

Off (the default) it contacts nothing and passes the review file through. The library is ta/selfinstruct/;
docs/selfinstruct.md shows a whole round (generate 1,000 pairs, review, train, compare).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ta import libraries
from ta.config import load_params
from ta.errors import report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each retry and the run's spend")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request; the SDK's retries stay visible

    def body() -> None:
        libraries.check("selfinstruct")  # the installed versions are the ones libraries.yaml records
        from ta.selfinstruct.run import print_summary, run_stage

        params = load_params()
        print_summary(run_stage(params.selfinstruct, params.prepare.refusal_patterns))

    return report("selfinstruct", body)


if __name__ == "__main__":
    sys.exit(main())
