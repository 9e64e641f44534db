"""The docs that the code cites ship with it, and every citation resolves.

Comments and docstrings cite ``docs/<file>.md#<anchor>``, the anchor being a heading of
that file as GitHub spells it (``## Exploding gradients`` -> ``#exploding-gradients``).
The design notes the project started from lived outside the repository; a citation of
them points nowhere for anyone with only a checkout, so none may remain.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCANNED = ("trainlab", "tests", "bench", "examples", "docs", "README.md")
"""Where citations live (a folder that does not exist is skipped)."""

OUTSIDE_NOTES = re.compile(r"\b(?:DESIGN|KNOWLEDGE)\.md\b")
"""The out-of-repository design notes (spelled as a pattern so this file does not cite them)."""
CITATION = re.compile(r"\bdocs/([\w.-]+\.md)(?:#([\w-]+))?")
"""``docs/<file>.md`` with an optional ``#anchor``."""
RELATIVE_LINK = re.compile(r"\]\(((?:[\w.-]+\.md)?)(?:#([\w-]+))?\)")
"""A Markdown link inside docs/: ``[text](other.md#anchor)``, ``[text](#anchor)``."""
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(p for p in path.rglob("*")
                            if p.is_file() and "__pycache__" not in p.parts)
    return files


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # a binary file cites nothing


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """Every heading anchor of ``doc``; a repeated heading's later copies get -1, -2..."""
    seen: dict[str, int] = {}
    found = set()
    in_fence = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        m = None if in_fence else HEADING.match(line)
        if m:
            base = slug(m.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def citations() -> list[tuple[str, str, str | None]]:
    """(where, cited doc, anchor or None) for every docs/ citation in the scanned files
    and every relative Markdown link between the docs."""
    found = []
    for path in scanned_files():
        text = text_of(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT)
        for number, line in enumerate(text.splitlines(), 1):
            for m in CITATION.finditer(line):
                found.append((f"{rel}:{number}", m.group(1), m.group(2)))
            if path.parent == DOCS and path.suffix == ".md":
                for m in RELATIVE_LINK.finditer(line):
                    found.append((f"{rel}:{number}", m.group(1) or path.name, m.group(2)))
    return found


def test_slug_follows_github():
    assert slug("Exploding gradients") == "exploding-gradients"
    assert slug("The live doctor: detectors") == "the-live-doctor-detectors"
    assert slug("Checkpoints, resume and fork") == "checkpoints-resume-and-fork"
    assert slug("NaN and inf") == "nan-and-inf"


def test_nothing_cites_notes_outside_the_repository():
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in scanned_files() if (text := text_of(path)) is not None
                 for number, line in enumerate(text.splitlines(), 1)
                 if OUTSIDE_NOTES.search(line)]
    assert offenders == [], ("cite docs/<file>.md#<heading> instead of notes outside the "
                             "repository:\n" + "\n".join(offenders))


def test_the_docs_are_cited():
    # The checks below mean something: code does cite the docs, anchors included.
    cited = {(doc, anchor) for _, doc, anchor in citations()}
    assert {"architecture.md", "field-knowledge.md"} <= {doc for doc, _ in cited}
    assert any(anchor for _, anchor in cited)


@pytest.mark.parametrize("doc", ["architecture.md", "field-knowledge.md"])
def test_readme_links_the_docs(doc):
    assert f"](docs/{doc})" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_cited_doc_and_heading_exists():
    known: dict[str, set[str] | None] = {}
    broken = []
    for where, doc, anchor in citations():
        if doc not in known:
            path = DOCS / doc
            known[doc] = anchors(path) if path.is_file() else None
        if known[doc] is None:
            broken.append(f"{where}: docs/{doc} does not exist")
        elif anchor is not None and anchor not in known[doc]:
            broken.append(f"{where}: docs/{doc} has no heading #{anchor}")
    assert broken == [], "\n".join(broken)
