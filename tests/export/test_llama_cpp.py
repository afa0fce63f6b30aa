"""Where llama.cpp's converter comes from (ta/export/llama_cpp.py): the sdist of the installed llama-cpp-python,
or a user's own checkout."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ta.export import llama_cpp
from ta.export.llama_cpp import ConverterNotFound, converter_dir, extract


def test_converter_is_found_in_the_venv() -> None:
    where = converter_dir()
    assert where == llama_cpp.default_dir()
    assert (where / "convert_hf_to_gguf.py").is_file()
    assert (where / "gguf-py" / "gguf").is_dir() and (where / "conversion").is_dir()


def test_a_users_checkout_is_taken_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    assert converter_dir(str(tmp_path)) == tmp_path


def test_a_users_dir_without_converter_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConverterNotFound, match=r"convert_hf_to_gguf.py: not found; check gguf.llama_cpp_dir"):
        converter_dir(str(tmp_path))


def sdist(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_only_the_converter_and_its_packages_are_extracted(tmp_path: Path) -> None:
    root = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
    files = {
        root + "convert_hf_to_gguf.py": b"# converter",
        root + "conversion/__init__.py": b"",
        root + "gguf-py/gguf/__init__.py": b"",
        root + "src/llama.cpp": b"// C++",
        "llama_cpp_python-0.3.36/setup.py": b"",
    }
    extract(sdist(tmp_path / "s.tar.gz", files), tmp_path / "out")
    found = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert found == ["conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert (tmp_path / "out/convert_hf_to_gguf.py").read_bytes() == b"# converter"


def test_an_sdist_without_the_converter_is_refused(tmp_path: Path) -> None:
    archive = sdist(tmp_path / "s.tar.gz", {"pkg/vendor/llama.cpp/README.md": b""})
    with pytest.raises(ConverterNotFound, match=r"s.tar.gz: no vendor/llama.cpp/convert_hf_to_gguf.py inside"):
        extract(archive, tmp_path / "out")
