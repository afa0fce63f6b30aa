"""The README is the front door: it must document every param and show the two commands first."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def param_paths(node: object, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix]
    paths = []
    for key, value in node.items():
        paths += param_paths(value, f"{prefix}.{key}" if prefix else key)
    return paths


def test_readme_documents_every_param():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([a-z_][a-z0-9_.]*)`", readme))
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    missing = [p for p in param_paths(params) if p not in documented]
    assert not missing, f"params missing from README.md's parameter table: {missing}"


def test_readme_parameter_table_is_generated_from_params_yaml():
    from stages.params import params_table

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- params-table:start -->\n", 1)[1].split("<!-- params-table:end -->", 1)[0]
    assert block.strip() == params_table(REPO / "params.yaml").strip()


def test_readme_shows_the_two_commands_first():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make run", "make test"]


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci/run").read_text(encoding="utf-8")


def test_every_stage_module_has_help():
    import subprocess
    import sys

    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    for name, stage in dvc_yaml["stages"].items():
        module = stage["cmd"].split("-m ", 1)[1].split()[0]
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0 and "usage:" in result.stdout, (name, result.stderr[-500:])
