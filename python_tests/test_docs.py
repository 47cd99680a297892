"""The documentation the code cites lives in the repository: every "§" citation names a section
of docs/algorithms.md or docs/baselines.md, and nothing points outside the repository
(tools/check_citations.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


check_citations = _load("check_citations")


def test_every_citation_resolves_inside_the_repository():
    result = subprocess.run([sys.executable, os.path.join(TOOLS, "check_citations.py")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documents_define_the_sections_the_code_uses_most():
    for doc, sections in (("algorithms", {"1.1", "2.2", "2.3", "3", "4.0", "4.1", "4.2", "4.3",
                                          "4.4", "4.5", "5.1", "5.2", "6", "6.1", "8.3", "8.4",
                                          "9", "10.1", "11.1", "11.7"}),
                          ("baselines", {"1.3", "1.4", "2.4", "2.8", "3.4", "3.10", "4.3", "4.8"})):
        with open(os.path.join(ROOT, check_citations.DOCS[doc]), encoding="utf-8") as f:
            found, decisions = check_citations.doc_sections(f.read())
        assert sections <= found, sections - found
        assert {"1", "4"} <= decisions


def _tree(tmp_path, files: dict[str, str]) -> str:
    root = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "docs"), root / "docs")
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return str(root)


@pytest.mark.parametrize("text,message", [
    ("# see docs/algorithms.md §99.1\n", "§99.1 does not exist in docs/algorithms.md"),
    ("# see docs/baselines.md Decision 42\n", "Decision 42 does not exist in docs/baselines.md"),
    ("# as in /work/shared/BUILD.md\n", "outside the repository"),
    ("# the spec §4.3 says\n", "cites 'spec §…'"),
    ("# as in ../shared/spec/ALGORITHMS.md §4.3\n", "outside the repository"),
])
def test_checker_reports_bad_citations(tmp_path, text, message):
    root = _tree(tmp_path, {"pkg/mod.py": text})
    _, problems = check_citations.check(root)
    assert any(message in str(p) for p in problems), [str(p) for p in problems]
