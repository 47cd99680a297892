#!/usr/bin/env python3
"""Checks that every "§" citation in the repository names a section that exists in the
repository's own documents, and that nothing points to documents outside the repository.

A citation is "§x.y" (also "§x.y–§x.z" and "§x.y–x.z"), or "Decision N". It refers to
``docs/algorithms.md`` or ``docs/baselines.md``:

* in a file under ``docs/``: a document named earlier on the same line, else the file itself;
* elsewhere: the document named nearest before it in the file (on the same line or an earlier
  one), else ``docs/baselines.md`` for a path containing "baselines", else
  ``docs/algorithms.md``.

A section exists when the document has a heading whose number it is ("### 4.3 BP …" defines
§4.3, "## 4. Inner loop" defines §4); Decision N exists when the document's "Decisions" section
has a list item "N. ...". Problems reported, each failing the check:

* a cited section or decision that the document lacks;
* a pointer outside the repository: the names of the external specification files, a path into
  a shared folder, or "spec §x" (a citation of a specification that is not named).

Usage: ``python tools/check_citations.py [--root DIR] [--list]``; ``--list`` prints every
citation with the document it resolves to. Exit status 0 when there is no problem, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass

DOCS = {"algorithms": "docs/algorithms.md", "baselines": "docs/baselines.md"}

# Text files that may carry citations.
EXTENSIONS = (".py", ".pyi", ".h", ".hpp", ".c", ".cc", ".cpp", ".cu", ".cuh", ".md", ".rst",
              ".txt", ".sh", ".toml", ".cfg", ".cmake", ".yml", ".yaml")
NAMES = ("CMakeLists.txt",)

# Files that spell the outside names and sample citations to find them: not scanned.
EXEMPT = {"tools/check_citations.py", "python_tests/test_docs.py"}

# A document named in the text: docs/algorithms.md, algorithms.md, ALGORITHMS.md (and baselines).
DOC_MENTION = re.compile(r"(?i)\b(algorithms|baselines)\.md\b")
_NUM = r"\d+(?:\.\d+)*"
CITATION = re.compile(rf"§\s?({_NUM})(?:\s?[–-]\s?§?\s?({_NUM}))?")
DECISION = re.compile(r"\bDecisions? (\d+)\b")
OUTSIDE = [
    (re.compile(r"\b(?:ALGORITHMS|BASELINES|BUILD|STYLE)\.md\b"),
     "names a specification file outside the repository"),
    (re.compile(r"(?:^|[^\w])(?:\.\./|/work/)?shared/(?:spec/)?\w"),
     "points into a shared folder outside the repository"),
    (re.compile(r"(?i)\bspec\s+§"),
     "cites 'spec §…' (a specification outside the repository); name the document"),
]
HEADING = re.compile(rf"^#{{1,6}}\s+({_NUM})\.?(?:\s|$)")
DECISION_ITEM = re.compile(r"^\s{0,3}(\d+)\.\s")


@dataclass
class Citation:
    path: str
    line: int
    ref: str  # "4.3" or "Decision 4"
    doc: str  # key of DOCS


@dataclass
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def repo_files(root: str) -> list[str]:
    """Tracked and untracked-but-not-ignored files (git), else every file under root."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, text=True, check=True).stdout
        files = out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "build"]
            files += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames]
    files = [f.replace(os.sep, "/") for f in files]
    return sorted(f for f in set(files)
                  if (f.endswith(EXTENSIONS) or os.path.basename(f) in NAMES)
                  and os.path.isfile(os.path.join(root, f)))


def default_doc(path: str) -> str:
    for key, doc in DOCS.items():
        if path == doc:
            return key
    return "baselines" if "baselines" in path else "algorithms"


def doc_sections(text: str) -> tuple[set[str], set[str]]:
    """(section numbers of the headings, decision numbers of the Decisions section)."""
    sections, decisions = set(), set()
    in_decisions = False
    for line in text.splitlines():
        heading = HEADING.match(line)
        if heading:
            sections.add(heading.group(1))
        if line.startswith("#"):
            in_decisions = "decision" in line.lower()
            continue
        item = DECISION_ITEM.match(line)
        if in_decisions and item:
            decisions.add(item.group(1))
    return sections, decisions


def scan_text(path: str, text: str) -> tuple[list[Citation], list[Problem]]:
    """The citations of one file, each resolved to its document, and its outside pointers."""
    citations, problems = [], []
    in_docs = path.startswith("docs/")
    current = default_doc(path)
    for lineno, line in enumerate(text.splitlines(), 1):
        for pattern, message in OUTSIDE:
            if pattern.search(line):
                problems.append(Problem(path, lineno, f"{message}: {line.strip()[:120]}"))
        mentions = [(m.start(), m.group(1).lower()) for m in DOC_MENTION.finditer(line)]
        line_start_doc = default_doc(path) if in_docs else current

        def doc_at(pos: int) -> str:
            before = [key for start, key in mentions if start < pos]
            return before[-1] if before else line_start_doc

        for m in CITATION.finditer(line):
            for ref in (m.group(1), m.group(2)):
                if ref:
                    citations.append(Citation(path, lineno, ref, doc_at(m.start())))
        for m in DECISION.finditer(line):
            citations.append(Citation(path, lineno, f"Decision {m.group(1)}", doc_at(m.start())))
        if mentions and not in_docs:
            current = mentions[-1][1]
    return citations, problems


def check(root: str) -> tuple[list[Citation], list[Problem]]:
    index = {}
    problems: list[Problem] = []
    for key, doc in DOCS.items():
        full = os.path.join(root, doc)
        if os.path.isfile(full):
            with open(full, encoding="utf-8") as f:
                index[key] = doc_sections(f.read())
        else:
            index[key] = (set(), set())
            problems.append(Problem(doc, 0, "document missing"))
    citations: list[Citation] = []
    for path in repo_files(root):
        if path in EXEMPT:
            continue
        try:
            with open(os.path.join(root, path), encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            continue
        found, outside = scan_text(path, text)
        citations += found
        problems += outside
    for c in citations:
        sections, decisions = index[c.doc]
        if c.ref.startswith("Decision "):
            ok = c.ref.split()[1] in decisions
        else:
            ok = c.ref in sections
        if not ok:
            what = c.ref if c.ref.startswith("Decision") else f"§{c.ref}"
            problems.append(Problem(c.path, c.line, f"{what} does not exist in {DOCS[c.doc]}"))
    problems.sort(key=lambda p: (p.path, p.line))
    return citations, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="repository root (default: the parent of tools/)")
    parser.add_argument("--list", action="store_true", help="print every citation")
    args = parser.parse_args(argv)
    citations, problems = check(args.root)
    if args.list:
        for c in citations:
            what = c.ref if c.ref.startswith("Decision") else f"§{c.ref}"
            print(f"{c.path}:{c.line}: {what} -> {DOCS[c.doc]}")
    for p in problems:
        print(p)
    files = len({c.path for c in citations})
    print(f"{len(citations)} citations in {files} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
