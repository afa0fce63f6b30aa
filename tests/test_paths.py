"""ta/paths.py and dvc.yaml spell the same paths, and each stage depends on the code it runs.

- every deps/outs entry of dvc.yaml is a path of ta.paths (or a file inside one), or a code file there is;
- every path of ta.paths is in dvc.yaml (itself, inside an entry, or holding one);
- the GGUF outputs are ta.paths.gguf_file() of the shipped gguf.outtype and quantize.types;
- a stage's code deps cover every library module it imports (directly or not): change one and DVC reruns it;
- a stage that fixes its compute settings (ta/reproducibility.py) declares the `reproducibility` params.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import yaml

from ta import paths
from ta.config import load_params
from tests.helpers import REPO

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
STAGES = DVC_YAML["stages"]
PATHS = {name: PurePosixPath(value) for name, value in vars(paths).items() if isinstance(value, Path)}
SHIPPED = load_params(REPO / "params.yaml")
GGUF_FILES = {PurePosixPath(paths.gguf_file(kind)) for kind in [SHIPPED.gguf.outtype, *SHIPPED.quantize.types]}
# The library's core, which every stage runs: loading params, spelling paths, reporting errors, checking the library
# versions (libraries.yaml, itself a params file of the stages). A stage that
# listed them would rerun on every edit of an error message.
CORE = {
    "ta",
    "ta.config",
    "ta.paths",
    "ta.errors",
    "ta.libraries",
    "ta.allocator",  # malloc settings: the speed, never the bytes
    "ta.process",  # the garbage collector's settings: the speed, never the bytes
}  # read params and check the setup; outputs never depend on them


def entries(kind: str) -> list[tuple[str, PurePosixPath]]:
    """(stage, path) of every `deps` entry, or of every output (`outs` and the stage's `metrics`)."""
    found = []
    for name, stage in STAGES.items():
        for entry in stage.get("deps", []) if kind == "deps" else stage.get("outs", []) + stage.get("metrics", []):
            found.append((name, PurePosixPath(next(iter(entry)) if isinstance(entry, dict) else entry)))
    return found


def is_code(path: PurePosixPath) -> bool:
    local = REPO / path
    if local.is_dir():  # a package: Python files (and the caches beside them, which .dvcignore leaves out)
        files = [p for p in local.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        return bool(files) and all(p.suffix == ".py" for p in files)
    return local.is_file() and path.suffix == ".py"


def within(path: PurePosixPath, other: PurePosixPath) -> bool:
    return path == other or other in path.parents


def test_every_dvc_yaml_entry_is_a_path_of_ta_paths_or_code() -> None:
    known = set(PATHS.values()) | GGUF_FILES
    for stage, path in entries("deps") + entries("outs"):
        assert is_code(path) or any(within(path, p) for p in known), f"{stage}: {path} is not spelled in ta/paths.py"


def test_every_path_of_ta_paths_is_in_dvc_yaml() -> None:
    listed = [path for _, path in entries("deps") + entries("outs")]
    for name, path in PATHS.items():
        if name == "PARAMS_FILE":  # DVC's own default for every stage's `params:`
            assert path == PurePosixPath("params.yaml") and all("params" in stage for stage in STAGES.values())
            continue
        if name == "DVC_FILE":  # the pipeline file itself
            assert path == PurePosixPath("dvc.yaml")
            continue
        if name == "LIBRARIES_FILE":  # a params file: every stage but the pure-Python ones lists keys of it
            listing = [
                stage
                for stage, spec in STAGES.items()
                if any(str(path) in e for e in spec["params"] if isinstance(e, dict))
            ]
            assert len(listing) >= len(STAGES) - 1, listing
            continue
        assert any(within(path, entry) or within(entry, path) for entry in listed), f"ta.paths.{name}: {path}"


def test_the_gguf_files_are_the_shipped_types() -> None:
    gguf_outs = {path for stage, path in entries("outs") if path.suffix == ".gguf"}
    assert gguf_outs == GGUF_FILES
    assert ("gguf", PurePosixPath(paths.gguf_file(SHIPPED.gguf.outtype))) in entries("outs")


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_runs_its_entry_point_and_depends_on_every_module_it_imports(stage: str) -> None:
    from tools.layout import project_modules

    assert STAGES[stage]["cmd"] == f"python -m stages.{stage}"
    imported, modules = imported_modules(stage), project_modules()
    deps = [path for name, path in entries("deps") if name == stage]
    assert PurePosixPath(f"stages/{stage}.py") in deps
    needed = {
        PurePosixPath(modules[m].relative_to(REPO).as_posix())
        for m in imported - CORE
        if modules[m].name != "__init__.py"
    }
    missing = sorted(str(p) for p in needed if not any(within(p, dep) for dep in deps))
    assert not missing, f"stage {stage} runs {missing} but dvc.yaml does not list them in its deps"


def imported_modules(stage: str) -> set[str]:
    """The project modules `stages.<stage>` imports, directly or not."""
    from tools.layout import import_graph

    graph = import_graph()
    imported, todo = set(), [f"stages.{stage}"]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in imported:
                imported.add(target)
                todo.append(target)
    return imported


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_that_fixes_its_compute_settings_declares_them(stage: str) -> None:
    """DVC reruns a stage when a param it lists changes: a stage that runs ta.reproducibility.apply() reads
    the `reproducibility` section, so it lists it, and one that does not run it does not list it."""
    applies = "ta.reproducibility" in imported_modules(stage)
    assert ("reproducibility" in STAGES[stage]["params"]) == applies


@pytest.mark.parametrize(
    ("stage", "sources"),
    [
        ("prepare", SHIPPED.prepare.sources("sft") + SHIPPED.prepare.sources("preference")),
        ("base", SHIPPED.prepare.sources("sft") + SHIPPED.prepare.sources("preference")),
        ("selfinstruct", SHIPPED.selfinstruct.sources()),
    ],
)
def test_every_local_source_in_params_is_a_dep_of_the_stages_that_read_it(stage: str, sources: list) -> None:
    """DVC reruns a stage only when a dep changes; ta.data.sources.check_tracked stops `dvc repro` on a source
    outside the deps, and this keeps the shipped params clear of that."""
    deps = [path for name, path in entries("deps") if name == stage]
    local = [PurePosixPath(source.path) for source in sources if source.path]
    assert local and all(any(within(path, dep) for dep in deps) for path in local)
