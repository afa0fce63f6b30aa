"""What each request asks for: a subject and a difficulty, few-shot examples, and the user's own templates.

Request i takes the i-th (subject, difficulty) of a seeded shuffle of all combinations, so every subject
and level comes round evenly. Its examples are sampled, with a generator seeded by (seed, i), from the
seeds and from the pairs this run accepted in earlier rounds (the same subject first), as in the
Self-Instruct paper's bootstrap; the sampling seed sent with the request comes from the same generator.
Everything is a function of the params and of replies already received, so a rerun builds exactly the same
requests and finds every reply in the cache.

The templates are plain text files under prompts/selfinstruct/<language>/ (system.txt, user.txt) with
`$subject`, `$difficulty`, `$num_pairs` and `$examples` (a JSON list of {instruction, answer}) in them;
`$$` is a literal dollar sign. Their hash travels with every pair they produced.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

from ta import paths
from ta.config import SelfInstruct
from ta.errors import SelfInstructError
from ta.selfinstruct.seeds import Pair

TEMPLATE_FILES = ("system.txt", "user.txt")
PLACEHOLDERS = ("subject", "difficulty", "num_pairs", "examples")

Message = dict[str, str]


@dataclass(frozen=True)
class Templates:
    system: str
    user: str
    digest: str  # sha256:<12 hex> of both files

    def render(self, values: dict[str, str]) -> list[Message]:
        return [
            {"role": "system", "content": string.Template(self.system).substitute(values).strip()},
            {"role": "user", "content": string.Template(self.user).substitute(values).strip()},
        ]


def load_templates(language: str, root: Path = paths.PROMPTS_DIR) -> Templates:
    """The two template files of a language, checked: every placeholder known, `$` used correctly."""
    folder = root / language
    if not folder.is_dir():
        raise SelfInstructError(
            f"{folder}: no prompt templates for selfinstruct.language {language!r}; "
            f"write {' and '.join(TEMPLATE_FILES)} there"
        )
    texts = []
    for name in TEMPLATE_FILES:
        path = folder / name
        if not path.is_file():
            raise SelfInstructError(f"{path}: template missing")
        text = path.read_text(encoding="utf-8")
        try:
            string.Template(text).substitute(dict.fromkeys(PLACEHOLDERS, ""))
        except KeyError as err:
            raise SelfInstructError(
                f"{path}: unknown placeholder ${err.args[0]} (known: {', '.join('$' + p for p in PLACEHOLDERS)})"
            ) from None
        except ValueError as err:
            raise SelfInstructError(f"{path}: {err}; write $$ for a literal dollar sign") from None
        texts.append(text)
    digest = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()[:12]
    return Templates(texts[0], texts[1], f"sha256:{digest}")


@dataclass(frozen=True)
class Example:
    """A pair shown in a prompt: a seed, or a pair generated earlier in the run (with its subject)."""

    instruction: str
    answer: str
    subject: str = ""


@dataclass(frozen=True)
class RequestPlan:
    index: int
    subject: str
    difficulty: str
    examples: tuple[Example, ...]
    sampling_seed: int


def topics(params: SelfInstruct) -> list[tuple[str, str]]:
    """Every (subject, difficulty), in a seeded order that requests cycle through."""
    combinations = [(subject, level) for subject in params.subjects for level in params.difficulties]
    random.Random(f"selfinstruct-topics:{params.seed}").shuffle(combinations)
    return combinations


def plan_request(
    index: int, params: SelfInstruct, order: list[tuple[str, str]], seeds: list[Pair], generated: list[Example]
) -> RequestPlan:
    """Request `index`: its topic and examples. `generated` holds what earlier rounds accepted; when it has
    fewer than generated_examples, seeds fill in, so every prompt shows the same number of examples."""
    rng = random.Random(f"selfinstruct:{params.seed}:{index}")
    subject, difficulty = order[index % len(order)]
    same_subject = [example for example in generated if example.subject == subject]
    pool = same_subject if len(same_subject) >= params.generated_examples else generated
    chosen = rng.sample(pool, min(params.generated_examples, len(pool)))
    wanted = params.seed_examples + params.generated_examples - len(chosen)
    chosen += [Example(s.instruction, s.answer) for s in rng.sample(seeds, min(wanted, len(seeds)))]
    rng.shuffle(chosen)
    return RequestPlan(index, subject, difficulty, tuple(chosen), rng.randrange(2**31))


def request_messages(plan: RequestPlan, params: SelfInstruct, templates: Templates) -> list[Message]:
    examples = [
        {"instruction": example.instruction, "answer": cut(example.answer, params.example_max_chars)}
        for example in plan.examples
    ]
    values = {
        "subject": plan.subject,
        "difficulty": plan.difficulty,
        "num_pairs": str(params.pairs_per_request),
        "examples": json.dumps(examples, ensure_ascii=False, indent=2),
    }
    return templates.render(values)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + "……"
