#!/usr/bin/env python3
"""Rewrites citations of the external specification into citations of the repository's documents.

* "ALGORITHMS.md" (also as "../shared/spec/ALGORITHMS.md", "shared/spec/ALGORITHMS.md") becomes
  "docs/algorithms.md"; "BASELINES.md" becomes "docs/baselines.md";
* the word "spec" (or "spec:") in front of a document name is dropped:
  "spec ALGORITHMS.md §4.3" → "docs/algorithms.md §4.3", "(spec: `ALGORITHMS.md`)" →
  "(`docs/algorithms.md`)";
* "spec §x" / "Spec §x" becomes "docs/algorithms.md §x", or "docs/baselines.md §x" where
  ``check_citations`` resolves the citation to the baselines document.

A separator comment ("# ---- title ----") keeps its width: its trailing rule is shortened by
what the rewrite added. Other rewritten lines that become wider than 100 columns are listed for
reflowing by hand. The rewrite is idempotent: a second run changes nothing. It prints every
changed line and a count. Usage: ``python tools/rewrite_citations.py [--root DIR] [--dry-run]``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_citations import DOC_MENTION, DOCS, EXEMPT, default_doc, repo_files  # noqa: E402

# Outside names (with an optional path into the shared folder) → the repository's documents.
OUTSIDE_NAME = re.compile(r"(?:(?:\.\./|/work/)?shared/spec/)?\b(ALGORITHMS|BASELINES)\.md\b")
# "spec" or "spec:" before a document name, the name possibly in backquotes.
SPEC_BEFORE_DOC = re.compile(r"\b[Ss]pec:?\s+(`*)(docs/(?:algorithms|baselines)\.md)")
# "spec §" with no document named.
SPEC_SECTION = re.compile(r"\b[Ss]pec\s+(?=§)")
# Remarks about what the external specification says that docs/algorithms.md does not say (it
# states the corrected fact): dropped, so that the rewrite does not turn them into false claims.
STALE = [
    # binary_bp.h on the growth of U: docs/algorithms.md §2.2 gives ω²/(4V), as the code does.
    (re.compile(r" \(spec §2\.2 says ω²/\(2V\); the\n(\s*//) asymptote of ½ ln\(2/erfc y\) is y²/2 = "
                r"ω²/\(4s²\)\) \(pitfall §10\.2\)\."),
     r" = y²/2,\n\1 the asymptote of ½ ln(2/erfc y) (pitfall §10.2)."),
]
# A trailing rule of a separator comment ("# ---- title -----"), shortened to keep the width.
RULE = re.compile(r"([-=])\1{3,}$")
WIDTH = 100


def rewrite_text(path: str, text: str) -> tuple[str, list[tuple[int, str, str]]]:
    """The rewritten text and the changed lines as (line number, old, new)."""
    in_docs = path.startswith("docs/")
    current = default_doc(path)
    out, changes = [], []
    original = text.split("\n")
    for pattern, replacement in STALE:
        text = pattern.sub(replacement, text)
    for lineno, line in enumerate(text.split("\n"), 1):
        new = OUTSIDE_NAME.sub(lambda m: DOCS[m.group(1).lower()], line)
        new = SPEC_BEFORE_DOC.sub(r"\1\2", new)
        line_start_doc = default_doc(path) if in_docs else current

        def doc_for(m: re.Match) -> str:
            before = [d.group(1).lower() for d in DOC_MENTION.finditer(new) if d.start() < m.start()]
            return DOCS[before[-1] if before else line_start_doc] + " "

        new = SPEC_SECTION.sub(doc_for, new)
        rule = RULE.search(new)
        if rule and len(new) > len(line):
            keep = max(4, len(rule.group(0)) - (len(new) - len(line)))
            new = new[:rule.start()] + rule.group(1) * keep
        mentions = DOC_MENTION.findall(new)
        if mentions and not in_docs:
            current = mentions[-1].lower()
        old = original[lineno - 1] if lineno <= len(original) else ""
        if new != old:
            changes.append((lineno, old, new))
        out.append(new)
    return "\n".join(out), changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="repository root (default: the parent of tools/)")
    parser.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    args = parser.parse_args(argv)
    total = files = 0
    wide: list[str] = []
    for path in repo_files(args.root):
        if path in EXEMPT:
            continue
        full = os.path.join(args.root, path)
        try:
            with open(full, encoding="utf-8", newline="") as f:
                text = f.read()
        except UnicodeDecodeError:
            continue
        new_text, changes = rewrite_text(path, text)
        if not changes:
            continue
        files += 1
        total += len(changes)
        for lineno, old, new in changes:
            print(f"{path}:{lineno}:\n  - {old.strip()}\n  + {new.strip()}")
            if len(new) > WIDTH >= len(old):
                wide.append(f"{path}:{lineno}")
        if not args.dry_run:
            with open(full, "w", encoding="utf-8", newline="") as f:
                f.write(new_text)
    if wide:
        print(f"{len(wide)} rewritten lines are now wider than {WIDTH} columns (reflow by hand):")
        print("\n".join(f"  {w}" for w in wide))
    print(f"{'would change' if args.dry_run else 'changed'} {total} lines in {files} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
