"""The documentation the code cites lives in the repository: every "§" citation names a section
of docs/algorithms.md or docs/baselines.md, and nothing points outside the repository
(tools/check_citations.py); tools/rewrite_citations.py turns citations of the external
specification into citations of those documents."""

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
rewrite_citations = _load("rewrite_citations")


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


OLD = {
    "pkg/ops.py": ('"""Maths of spec ``../shared/spec/ALGORITHMS.md`` §2–§6."""\n'
                   "# BP is BPI at τ_max = 1 (spec §4.3); Spec §11 tolerances.\n"
                   "# ---- the updates of spec §4, edge by edge " + "-" * 40 + "\n"),
    "pkg/baselines/ste.py": ('"""Trainer A (spec BASELINES.md §2).\n\n'
                             'Glorot factor (§2.4), Decision 4; spec §1.3."""\n'),
    "README.md": "m ← ψm + (1 − ψ) tanh H (spec: `ALGORITHMS.md`).\n",
}
NEW = {
    "pkg/ops.py": ('"""Maths of ``docs/algorithms.md`` §2–§6."""\n'
                   "# BP is BPI at τ_max = 1 (docs/algorithms.md §4.3); docs/algorithms.md §11 "
                   "tolerances.\n"
                   "# ---- the updates of docs/algorithms.md §4, edge by edge " + "-" * 26 + "\n"),
    "pkg/baselines/ste.py": ('"""Trainer A (docs/baselines.md §2).\n\n'
                             'Glorot factor (§2.4), Decision 4; docs/baselines.md §1.3."""\n'),
    "README.md": "m ← ψm + (1 − ψ) tanh H (`docs/algorithms.md`).\n",
}


def _tree(tmp_path, files: dict[str, str]) -> str:
    root = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "docs"), root / "docs")
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return str(root)


def test_rewrite_maps_outside_citations_and_is_idempotent(tmp_path, capsys):
    root = _tree(tmp_path, OLD)
    _, problems = check_citations.check(root)
    assert sorted({p.path for p in problems}) == sorted(OLD)
    assert rewrite_citations.main(["--root", root]) == 0
    assert "changed 6 lines in 3 files" in capsys.readouterr().out
    for path, text in NEW.items():
        with open(os.path.join(root, path), encoding="utf-8") as f:
            assert f.read() == text, path
    assert rewrite_citations.main(["--root", root]) == 0
    assert "changed 0 lines in 0 files" in capsys.readouterr().out
    citations, problems = check_citations.check(root)
    assert problems == []
    docs = {(c.path, c.ref): c.doc for c in citations}
    assert docs[("pkg/baselines/ste.py", "2.4")] == "baselines"
    assert docs[("pkg/baselines/ste.py", "Decision 4")] == "baselines"
    assert docs[("pkg/ops.py", "11")] == "algorithms"


@pytest.mark.parametrize("text,message", [
    ("# see docs/algorithms.md §99.1\n", "§99.1 does not exist in docs/algorithms.md"),
    ("# see docs/baselines.md Decision 42\n", "Decision 42 does not exist in docs/baselines.md"),
    ("# as in /work/shared/BUILD.md\n", "outside the repository"),
    ("# the spec §4.3 says\n", "cites 'spec §…'"),
])
def test_checker_reports_bad_citations(tmp_path, text, message):
    root = _tree(tmp_path, {"pkg/mod.py": text})
    _, problems = check_citations.check(root)
    assert any(message in str(p) for p in problems), [str(p) for p in problems]
