"""The library versions a stage's outputs are built with: libraries.yaml, checked before a stage runs.

libraries.yaml (written by `python -m tools.lock` from the lock files) holds one version per library whose
upgrade can change an artifact; each stage in dvc.yaml lists the keys it depends on as params from that file,
so DVC reruns exactly the stages an upgrade can change. `check(stage)` makes the same promise hold the other
way: a stage refuses to run when an installed version differs from the file, since what it wrote would then be
recorded in dvc.lock under versions it was not built with. The comparison is on the public version (torch
2.13.0 matches 2.13.0+cpu and 2.13.0+cu128: one version, a build per machine).

`TA_LIBRARY_CHECK=warn` turns the refusal into a warning for one run (an experiment on a machine whose wheels
differ); the outputs are then not reproducible from the lock, and the warning says so.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata
from pathlib import Path

from ta.errors import UserError
from ta.paths import DVC_FILE, LIBRARIES_FILE

log = logging.getLogger(__name__)


class LibraryVersionError(UserError):
    """An installed library differs from libraries.yaml for a stage that depends on it."""


def declared(stage: str, dvc_file: Path = DVC_FILE) -> list[str]:
    """The libraries.yaml keys the stage lists under `params:` in dvc.yaml."""
    import yaml

    spec = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages", {}).get(stage, {})
    names: list[str] = []
    for entry in spec.get("params", []) or []:
        if isinstance(entry, dict):
            names += entry.get(LIBRARIES_FILE.name) or []
    return names


def installed(name: str) -> str | None:
    """The public version of an installed distribution (`2.13.0+cpu` → `2.13.0`), None if it is not installed."""
    try:
        return metadata.version(name).split("+", 1)[0]
    except metadata.PackageNotFoundError:
        return None


def mismatches(stage: str, manifest: Path = LIBRARIES_FILE, dvc_file: Path = DVC_FILE) -> list[str]:
    """One line per library the stage depends on whose installed version is not the recorded one."""
    import yaml

    recorded = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
    problems = []
    for name in declared(stage, dvc_file):
        want, have = recorded.get(name), installed(name)
        if want is None:
            problems.append(f"{name}: listed for stage {stage} in {dvc_file} but missing from {manifest}")
        elif have != str(want):
            problems.append(f"{name} {have or 'not installed'} is installed, {manifest} records {want}")
    return problems


def check(stage: str) -> None:
    """Refuse to run `stage` with library versions other than libraries.yaml's (see the module docstring).
    Outside a DVC project (no dvc.yaml or no libraries.yaml in the working directory) there is nothing to
    check against."""
    if not (DVC_FILE.is_file() and LIBRARIES_FILE.is_file()):
        return
    problems = mismatches(stage)
    if not problems:
        return
    what = "; ".join(problems)
    if os.environ.get("TA_LIBRARY_CHECK") == "warn":
        log.warning("%s (TA_LIBRARY_CHECK=warn: the outputs will not match the lock)", what)
        return
    raise LibraryVersionError(
        f"{what}: install the locked set (`make install`), or change the pin in requirements.txt and run "
        "`make lock`, which records it so that DVC reruns the stages that depend on it"
    )
