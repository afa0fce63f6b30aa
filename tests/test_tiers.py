"""The two tiers' marking rule (tests/conftest.py): a test is `pipeline` (full tier only) when it uses
`pipeline_repo` directly or through any fixture built on it, or lives in tests/e2e/; everything else,
the reduced pipeline run included, is in the fast tier. Checked on a scratch suite run by pytest itself."""

from __future__ import annotations

import pytest

from tests.helpers import TESTS

pytest_plugins = ["pytester"]

SCRATCH = {
    "test_units.py": """
import pytest

@pytest.fixture
def built_on_units(tmp_path):
    return tmp_path

def test_plain():
    pass

def test_with_a_plain_fixture(built_on_units):
    pass

def test_on_the_reduced_run(reduced_repo):
    pass
""",
    "test_full.py": """
import pytest

@pytest.fixture
def my_clone(merged_dir):
    return merged_dir

def test_direct(pipeline_repo):
    pass

def test_through_a_session_fixture(q4_gguf):
    pass

def test_through_the_server(llama_server):
    pass

def test_through_a_local_fixture(my_clone):
    pass

def test_asked_for_at_run_time(request):
    request.getfixturevalue("pipeline_repo")
""",
    "e2e/test_flow.py": """
def test_flow():
    pass
""",
}


def collected(pytester: pytest.Pytester, *args: str) -> set[str]:
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider", *args)
    return {line.split("::")[1] for line in result.outlines if "::" in line}


@pytest.fixture
def scratch(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest((TESTS / "conftest.py").read_text(encoding="utf-8"))
    for name, text in SCRATCH.items():
        (pytester.path / name).parent.mkdir(exist_ok=True)
        (pytester.path / name).write_text(text, encoding="utf-8")
    return pytester


def test_fixtures_on_the_pipeline_and_e2e_tests_are_in_the_full_tier_only(scratch: pytest.Pytester) -> None:
    fast = {"test_plain", "test_with_a_plain_fixture", "test_on_the_reduced_run"}
    full_only = {
        "test_direct",
        "test_through_a_session_fixture",
        "test_through_the_server",
        "test_through_a_local_fixture",
        "test_flow",
    }
    assert collected(scratch, "-m", "not pipeline") == fast | {"test_asked_for_at_run_time"}
    assert collected(scratch, "-m", "pipeline") == full_only


def test_a_fixture_asked_for_at_run_time_is_not_seen_so_tests_name_theirs() -> None:
    """The rule reads the fixtures a test names (and theirs); `request.getfixturevalue` escapes it, which is
    why no test of this suite asks for pipeline_repo that way (reduced_repo does, on purpose: in a session
    with full-tier tests, the full run stands in for the reduced one)."""
    offenders = []
    for path in TESTS.rglob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        if 'getfixturevalue("pipeline_repo")' in text and path.name != "test_tiers.py":
            offenders.append(path.relative_to(TESTS).as_posix())
    assert offenders == []
