"""The README and docs/ link only to files inside the repository, and every such link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_stay_inside_the_repository_and_resolve(page):
    links = [m for m in LINK.findall(page.read_text()) if not m.startswith(("http://", "https://", "mailto:"))]
    for link in links:
        target = (page.parent / link).resolve()
        assert target.is_relative_to(REPO), f"{page.name} links outside the repository: {link}"
        assert target.exists(), f"{page.name} links to a missing file: {link}"
    assert "../shared" not in page.read_text()


def test_the_docs_cover_the_design():
    assert {p.name for p in PAGES} >= {"README.md", "architecture.md", "views.md", "cache.md", "objective.md"}
