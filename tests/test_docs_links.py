"""Every relative link in README.md and docs/ resolves: the file exists and, for a ``#anchor``
into a Markdown file, a heading of that file has that GitHub anchor."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _unfenced(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def _prose(text: str) -> str:
    """``text`` without code blocks and inline code (links there are not links)."""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in _unfenced(text))


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _unfenced(page.read_text()):
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            base = github_anchor(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    targets = [a or b for a, b in LINK.findall(_prose(page.read_text()))]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_checker_sees_links_and_anchors(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    page.write_text(
        "# Top: the `x` part\n[b](b.md) ![i](i.png) `[no](c.md)`\n```\n[no](d.md)\n```\n"
    )
    assert relative_links(page) == ["b.md", "i.png"]
    assert anchors(page) == {"top-the-x-part"}


def user_guide_commands(page: Path) -> list[str]:
    """The ``warmstart ...`` lines of the bash blocks under a page's ``## User guide``."""
    text = page.read_text()
    if "## User guide" not in text:
        return []
    guide = text.split("## User guide", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", guide, re.DOTALL)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.startswith("warmstart ")]


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_user_guide_opens_the_page_and_its_commands_parse(page: Path) -> None:
    """Each page starts with its user guide, whose ``warmstart`` commands the CLI accepts."""
    from warmstart.cli import build_parser

    headings = [ln for ln in _unfenced(page.read_text()) if ln.startswith("## ")]
    assert headings and headings[0] == "## User guide", f"{page.name}: first section {headings[:1]}"
    for line in user_guide_commands(page):
        argv = shlex.split(line, comments=True)[1:]
        try:
            build_parser().parse_args(argv)
        except SystemExit as err:  # argparse's exit on a bad command line
            raise AssertionError(f"{page.name}: {line!r} does not parse") from err
