"""README.md and docs/: README gives the test command CI runs, every relative link in them (and its #anchor) leads
somewhere, and README's Reference list links every docs/ page."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^()\s]+)\)")


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped (hyphens and underscores kept), spaces to hyphens."""
    out, fenced = set(), False
    for line in md.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_readme_gives_the_test_command_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert "pytest" in ci, "README's test command is `pytest`: .ci/run must run exactly it"
    commands = [line.split("#")[0].strip() for line in (REPO / "README.md").read_text().splitlines()]
    assert "pytest" in commands, "README must give the command .ci/run runs: `pytest`"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_reference_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    reference = readme.split("\n## Reference\n", 1)[-1]
    missing = [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in reference]
    assert not missing, f"README's Reference list lacks {missing}"
