"""The documentation: the README is the front door, docs/ the reference, and both must stay true.

Checked here: the README shows the two commands first and stays short; every link resolves inside the
repository; every command the pages show exists with the options they use; every `-S` override and every
ready-to-paste source block is a valid params.yaml; the Chinese README shows the same commands; docs/params.md
is generated from params.yaml and lists every key; the data card's counts are the files'; LICENSE is Apache-2.0.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_ZH = REPO / "README.zh-CN.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, README_ZH, *DOCS]
OUR_PACKAGES = ("stages", "ta", "serve", "tools", "bench")

# The datasets the guide recommends (sections 2.3 and 3.3) and the fixture written in each one's layout.
GUIDE_DATASETS = {
    "BAAI/COIG-KQ": "coig_kq.jsonl",
    "vicgalle/alpaca-gpt4": "alpaca_gpt4.jsonl",
    "anon8231489123/ShareGPT_Vicuna_unfiltered": "sharegpt.json",
    "YeungNLP/firefly-train-1.1M": "firefly.jsonl",
    "openbmb/UltraFeedback": "ultrafeedback_raw.jsonl",
    "Anthropic/hh-rlhf": "hh_rlhf.jsonl",
}


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every ``` block."""
    blocks, current, language = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                blocks.append((language, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def prose(text: str) -> str:
    """The text outside code blocks and inline code spans."""
    outside = re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", outside)


def commands(text: str) -> list[str]:
    """Shell command lines of the code blocks: prompts, comments and line continuations resolved."""
    found = []
    for _, lines in fenced_blocks(text):
        joined: list[str] = []
        for line in lines:
            if joined and joined[-1].endswith("\\"):
                joined[-1] = joined[-1][:-1].rstrip() + " " + line.strip()
            else:
                joined.append(line.strip().removeprefix("$ "))
        found += [" ".join(re.sub(r"\s+#(\s.*)?$", "", line).split()) for line in joined]
    return [line for line in found if line]


def project_commands(text: str) -> set[str]:
    return {c for c in commands(text) if c.split()[0] in ("make", "dvc", "python")}


def github_slugs(text: str) -> set[str]:
    slugs: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs[slug if slug not in slugs else f"{slug}-{slugs[slug]}"] = slugs.get(slug, 0) + 1
    return set(slugs)


# ----------------------------------------------------------------------------------------- front door


def test_readme_shows_the_two_commands_first() -> None:
    first_block = fenced_blocks(read(README))[0]
    assert first_block[0] == "bash"
    assert [line.split("#")[0].strip() for line in first_block[1]] == ["make run", "make test"]


def test_readme_is_a_front_door_not_a_manual() -> None:
    lines = read(README).splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_ci_runs_what_the_readme_calls_everything() -> None:
    ci = [line for line in read(REPO / ".ci/run").splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test-all"
    assert "`make test-all` runs every test" in read(README) and "(`.ci/run`)" in read(README)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = read(README)
    assert [page.name for page in DOCS if f"](docs/{page.name})" not in readme] == []


# --------------------------------------------------------------------------------------------- links


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_in_the_repository_and_resolve(page: Path) -> None:
    text = prose(read(page))
    assert not re.findall(r"(?:https?|ftp)://\S+", text), "keep the docs self-contained: no web links"
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]*)[^)]*\)", text):
        path, _, anchor = target.partition("#")
        assert not re.match(r"^[a-z][a-z0-9+.-]*:", path) and not path.startswith("/"), target
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_relative_to(REPO), f"{target}: points outside the repository"
        assert resolved.exists(), f"{target}: no such file"
        if anchor:
            assert resolved.suffix == ".md" and anchor in github_slugs(read(resolved)), f"{target}: no such heading"


def test_link_checks_catch_what_they_are_for() -> None:
    assert "the-guides-run" in github_slugs("## The guide's run\n")
    assert "vllm-production-gpu-guide-41" in github_slugs("## vLLM (production, GPU; guide 4.1)\n")
    assert "使用自己的数据" in github_slugs("## 使用自己的数据\n")
    assert prose("see `http://x` and\n```\nhttps://y\n```\n[a](b.md)") == "see  and\n\n[a](b.md)"


# ---------------------------------------------------------------------------------- commands shown


def documented_commands() -> set[str]:
    return {c for page in PAGES for c in commands(read(page))}


def python_targets() -> dict[tuple[str, ...], set[str]]:
    """{how to run one of our modules or scripts: the --options the pages pass it}."""
    targets: dict[tuple[str, ...], set[str]] = {}
    for command in documented_commands():
        if not command.startswith("python "):
            continue
        words = shlex.split(command)
        if words[1] == "-m" and words[2].split(".")[0] in OUR_PACKAGES:
            target, rest = ("-m", words[2]), words[3:]
        elif words[1].endswith(".py") and (REPO / words[1]).is_file():
            target, rest = (words[1],), words[2:]
        else:
            continue
        targets.setdefault(target, set()).update(w.split("=")[0] for w in rest if w.startswith("--"))
    return targets


def test_pages_show_our_commands() -> None:
    shown = {" ".join(target) for target in python_targets()}
    assert {"-m stages.prepare", "-m tools.estimate", "-m serve.vllm", "serve/vllm_client.py"} <= shown


def test_every_command_shown_exists_with_the_options_shown() -> None:
    for target, options in sorted(python_targets().items()):
        result = subprocess.run([sys.executable, *target, "--help"], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0 and "usage:" in result.stdout, (target, result.stderr[-500:])
        missing = sorted(o for o in options if not re.search(rf"{re.escape(o)}\b", result.stdout))
        assert not missing, f"python {' '.join(target)} has no option {missing}"


def test_every_make_target_shown_exists() -> None:
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", read(REPO / "Makefile"), re.M))
    shown = {c.split()[1] for c in documented_commands() if c.startswith("make ")}
    assert {"run", "test", "test-all", "report"} <= shown
    assert shown <= targets, f"not in the Makefile: {shown - targets}"


def make_exps(*args: str) -> str:
    """`make exps` in the repository as it is (no install: the stamp counts as up to date), dvc from this venv."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = ["make", "-s", "-o", ".venv/.installed", "exps", *args]
    return subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout


def test_make_exps_is_the_exp_show_the_pages_show() -> None:
    keep = re.search(r"^EXPS_KEEP := (.+)$", read(REPO / "Makefile"), re.M)[1]
    command = f"dvc exp show --drop '.*' --keep '{keep}'"
    assert make_exps("-n").strip() == command
    for page in (README, README_ZH, REPO / "docs/experiments.md"):
        shown = commands(read(page))
        assert command in shown and "make exps" in shown, page


def test_make_exps_shows_the_headline_columns_of_the_committed_run() -> None:
    header, *rows = csv.reader(io.StringIO(make_exps("EXPS_ARGS=--csv")))
    assert set(header) == {
        "Experiment",
        *("lr", "sft.method", "sft.lora.r", "dpo.beta"),
        *("dvclive/sft/metrics.json:eval.loss", "dvclive/dpo/metrics.json:eval.loss"),
        *("task.sft", "task.dpo", "task.gguf_q4_k_m", "quantization.q4_k_m_vs_f16_ppl_ratio"),
    }
    assert rows and all(len(row) == len(header) for row in rows)


# `--help` answers at once: none of these is imported before a stage's code path needs it.
HEAVY_MODULES = ("torch", "transformers", "trl", "peft", "datasets", "deepspeed", "llama_cpp", "numba", "dvclive")
HELP_PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("HEAVY", sorted({{m.split(".")[0] for m in sys.modules}} & {heavy}))
"""


def test_every_stage_module_has_help() -> None:
    dvc_yaml = yaml.safe_load(read(REPO / "dvc.yaml"))
    probe = HELP_PROBE.format(heavy=set(HEAVY_MODULES))
    for name, stage in dvc_yaml["stages"].items():
        module = stage["cmd"].split("-m ", 1)[1].split()[0]
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0 and "usage:" in result.stdout, (name, result.stderr[-500:])
        result = subprocess.run([sys.executable, "-c", probe, module], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, (name, result.stderr[-500:])
        heavy = result.stdout.rsplit("HEAVY ", 1)[1].strip()
        assert heavy == "[]", f"python -m {module} --help imports {heavy}"


# ------------------------------------------------------------------------ params the pages set


def set_key(params: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    assert last in node, f"-S {dotted}: no such key in params.yaml (dvc exp run -S only overrides existing keys)"
    node[last] = value


def load_with(tmp_path: Path, change) -> object:
    from ta.config import load_params

    params = yaml.safe_load(read(REPO / "params.yaml"))
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return load_params(path)


def override_sets(run: str) -> list[list[tuple[str, str]]]:
    """The `-S key=value` overrides of one `dvc exp run`, one value of a sweep at a time (others at their first)."""
    words = shlex.split(run)
    overrides = [words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "-S"]
    firsts = [(key, values.split(",")[0]) for key, values in overrides]
    return [
        [*firsts[:i], (key, value), *firsts[i + 1 :]]
        for i, (key, values) in enumerate(overrides)
        for value in values.split(",")
    ]


def apply_overrides(params: dict, pairs: list[tuple[str, str]]) -> None:
    for key, value in pairs:
        set_key(params, key, yaml.safe_load(value))  # as DVC writes them back: 1e-4 stays a YAML 1.1 string


def test_every_override_shown_is_a_valid_param(tmp_path: Path) -> None:
    runs = [c for c in documented_commands() if c.startswith("dvc exp run") and " -S " in c]
    assert any("base.model=Qwen/Qwen2.5-7B-Instruct" in run for run in runs)
    assert len(override_sets("dvc exp run -S lr=1e-4,5e-4 -S sft.lora.r=8,16")) == 4
    for run in runs:
        for pairs in override_sets(run):
            load_with(tmp_path, lambda params, pairs=pairs: apply_overrides(params, pairs))


def test_override_check_refuses_what_dvc_or_the_loader_would(tmp_path: Path) -> None:
    from ta.errors import ParamsError

    with pytest.raises(AssertionError, match="no such key"):
        load_with(tmp_path, lambda params: apply_overrides(params, [("sft.learning_rate", "1e-4")]))
    with pytest.raises(ParamsError, match="sft.method"):
        load_with(tmp_path, lambda params: apply_overrides(params, [("sft.method", "lorax")]))


def source_blocks(page: Path) -> list[dict]:
    blocks = []
    for language, lines in fenced_blocks(read(page)):
        block = yaml.safe_load("\n".join(lines)) if language == "yaml" else None
        if isinstance(block, dict) and {"sft_sources", "preference_sources"} & set(block.get("prepare") or {}):
            blocks.append(block["prepare"])
    return blocks


def fixture_rows(name: str) -> list[dict]:
    path = next(REPO.glob(f"tests/**/fixtures/prepare/{name}"))
    text = read(path)
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line]


@pytest.mark.parametrize("page", [README, README_ZH, REPO / "docs/data.md"], ids=lambda p: p.name)
def test_source_blocks_are_valid_params_and_read_the_guides_datasets(page: Path, tmp_path: Path) -> None:
    from ta.data.formats import detect_format, normalise
    from ta.data.sources import Source

    (block,) = source_blocks(page)
    params = load_with(tmp_path, lambda params: params["prepare"].update(block))
    hub = {}
    for kind in ("sft", "preference"):
        for config in params.prepare.sources(kind):
            if config.hub:
                hub[config.hub] = (kind, config)
    assert set(hub) == set(GUIDE_DATASETS)
    for dataset, (kind, config) in hub.items():
        assert config.revision, f"{dataset}: pin a revision"
        columns = Source(dataset, kind, config).column_map
        for row in fixture_rows(GUIDE_DATASETS[dataset]):
            assert detect_format({columns.get(k, k): v for k, v in row.items()}) == config.format, dataset
            sample = normalise(row, config.format, columns)
            assert sample.messages and sample.is_preference == (kind == "preference"), dataset


def test_both_readmes_paste_the_same_sources() -> None:
    assert source_blocks(README) == source_blocks(README_ZH) == source_blocks(REPO / "docs/data.md")


# ----------------------------------------------------------------------------- the Chinese README


def test_chinese_readme_shows_the_same_commands() -> None:
    english, chinese = project_commands(read(README)), project_commands(read(README_ZH))
    assert english == chinese, f"only in README.md: {english - chinese}; only in README.zh-CN.md: {chinese - english}"
    assert len(english) >= 15


def test_chinese_readme_has_the_same_sections() -> None:
    def sections(page: Path) -> int:
        return len(re.findall(r"^## ", read(page), re.M))

    assert sections(README) == sections(README_ZH)


def test_command_extraction() -> None:
    text = "```console\n$ dvc exp run \\\n  -S lr=1e-4   # 注释\n$ make test\n```\n```bash\npython -m x --a 1\n```\n"
    assert commands(text) == ["dvc exp run -S lr=1e-4", "make test", "python -m x --a 1"]


# ------------------------------------------------------------------------------ parameter reference


def param_paths(node: object, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix]
    return [path for key, value in node.items() for path in param_paths(value, f"{prefix}.{key}" if prefix else key)]


def test_params_page_is_generated_from_params_yaml() -> None:
    from tools.params_doc import params_page

    assert read(REPO / "docs/params.md") == params_page(), "run `python -m tools.params_doc`"


def test_params_page_lists_every_param() -> None:
    rows = set(re.findall(r"^\| `([^`]+)` \|", read(REPO / "docs/params.md"), re.M))
    missing = [p for p in param_paths(yaml.safe_load(read(REPO / "params.yaml"))) if p not in rows]
    assert not missing, f"params missing from docs/params.md: {missing}"


PARAMS_SAMPLE = """\
# Header line one
# and two.

top: 1.0e-4          # a float as written
section:
  # the comment above
  quoted: "a # not a comment"   # beside
  items:               # listed
    - hub: org/set
      format: alpaca
    - data/raw/x.jsonl
  # A source is a mapping; e.g.:
  #   - hub: org/other
  #     max_rows: 5
  other: []
  group:
    leaf: x | y        # pipes escaped
"""


def test_params_doc_reads_values_and_comments_as_written(tmp_path: Path) -> None:
    from tools.params_doc import params_page

    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_SAMPLE, encoding="utf-8")
    page = params_page(path)
    assert "> Header line one and two." in page
    assert "| `top` | `1.0e-4` | a float as written |" in page
    assert '| `section.quoted` | `"a # not a comment"` | the comment above beside |' in page
    assert "| `section.items` | list, below | listed |" in page
    assert "```yaml\n- hub: org/set\n  format: alpaca\n- data/raw/x.jsonl\n```" in page
    assert "| `section.other` | `[]` | A source is a mapping; e.g.: (example below) |" in page
    assert "```yaml\n- hub: org/other\n  max_rows: 5\n```" in page
    assert r"| `section.group.leaf` | `x \| y` | pipes escaped |" in page
    assert "`section.group` |" not in page  # a group without a comment has no row of its own


def test_params_doc_check_fails_on_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.params_doc as params_doc

    monkeypatch.setattr(params_doc, "OUT", tmp_path / "params.md")
    (tmp_path / "params.md").write_text("# stale\n", encoding="utf-8")
    assert params_doc.main(["--check"]) == 1
    assert params_doc.main([]) == 0 and params_doc.main(["--check"]) == 0


# ----------------------------------------------------------------------------- data card, licence


def test_data_card_counts_every_shipped_file() -> None:
    card = dict(re.findall(r"^\| `(data/raw/[^`]+)` \| (\d+) \|", read(REPO / "docs/data-card.md"), re.M))
    shipped = {str(p.relative_to(REPO)): p for p in sorted((REPO / "data/raw").iterdir()) if p.is_file()}
    assert set(card) == set(shipped)
    for name, path in shipped.items():
        assert int(card[name]) == sum(1 for line in read(path).splitlines() if line.strip()), name


def test_data_card_quotes_the_last_prepare_run() -> None:
    card = " ".join(read(REPO / "docs/data-card.md").split())
    stats = json.loads(read(REPO / "metrics/prepare.json"))
    splits = stats["splits"]
    assert f"prepare keeps {stats['kept']:,} of the {stats['rows_in']:,} rows ({stats['rejected']} drill rows" in card
    assert f"{splits['sft_train']} SFT rows and {splits['pref_train']} pairs for training" in card
    assert f"{splits['sft_eval']} and {splits['pref_eval']} for evaluation" in card


# A phone number: a 400/800 service number, a mobile or a landline anywhere; a 5-digit 12xxx government line
# or a 3-digit 11x/12x emergency number only shortly after a dial word (12000 and 110 are also sums).
ANYWHERE = r"[48]00-?\d{3}-?\d{4}|1[3-9]\d{9}|0\d{2,3}-\d{7,8}"
AFTER_DIAL_WORD = r"12\d{3}|1[12]\d"
DIAL_WORD = r"(?:拨打|拨|报警|电话|热线|服务台|call|dial|phone)[^。；;.\n]{0,40}"


def phone_numbers(text: str) -> set[str]:
    """The phone numbers `text` gives (the shapes China's help lines take)."""
    found = set(re.findall(rf"(?<![\d.-])(?:{ANYWHERE})(?![\d.-])", text))
    for near in re.findall(DIAL_WORD, text, re.I):
        found |= set(re.findall(rf"(?<![\d.-])(?:{AFTER_DIAL_WORD})(?![\d.-])", near))
    return found


def test_every_help_line_in_the_data_is_in_the_data_card() -> None:
    section = read(REPO / "docs/data-card.md").split("## Help lines", 1)[1].split("\n## ", 1)[0]
    table = set(re.findall(r"^\| `([\d-]+)` \|", section, re.M))
    shipped = [*(REPO / "data/raw").glob("*.jsonl"), *(REPO / "data/selfinstruct").glob("*.jsonl")]
    given = {number for path in shipped for number in phone_numbers(read(path))}
    assert given <= table, f"help lines in data/raw missing from the data card: {sorted(given - table)}"
    assert table <= given, f"the data card lists numbers the data no longer gives: {sorted(table - given)}"
    assert "12356" in given


def test_phone_number_search_finds_help_lines_not_sums() -> None:
    text = "可以拨打心理援助热线 12356 或希望24热线 400-161-9995；如果有危险，请立即拨打 120 或 110。"
    assert phone_numbers(text) == {"12356", "400-161-9995", "120", "110"}
    assert phone_numbers("所以 69 + 41 = 110。\n答案：110；12 吨 = 12000 千克") == set()
    assert phone_numbers("打 13912345678 或 010-12345678") == {"13912345678", "010-12345678"}


def test_license_is_the_apache_2_text() -> None:
    text = read(REPO / "LICENSE")
    # md5 of https://www.apache.org/licenses/LICENSE-2.0.txt, the text as the ASF publishes it
    assert hashlib.md5(text.encode()).hexdigest() == "3b83ef96387f14655fc854ddc3c6bd57"
    assert 'license = "Apache-2.0"' in read(REPO / "pyproject.toml")
