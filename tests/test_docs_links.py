"""Every relative link and `#anchor` in README.md and docs/*.md leads somewhere: the file exists, and the anchor is
a heading of it as GitHub slugs headings (or an explicit `id`/`name`). Pure Python: reads files, starts nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.test_readme import assert_shown_answer

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_TARGET = re.compile(r"""<a\s[^>]*href=["']([^"']+)["']""", re.I)
HTML_ANCHOR = re.compile(r"""<[a-z][^>]*\s(?:id|name)=["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation dropped (hyphens and underscores
    kept), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = path.read_text()
    for _, line in prose_lines(text):
        found.update(HTML_ANCHOR.findall(line))
    fenced = False
    for line in text.splitlines():  # headings with their code spans as GitHub renders them
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(path.read_text()):
        for pattern in (INLINE_LINK, REFERENCE_LINK, HTML_TARGET):
            found += [(number, target) for target in pattern.findall(line)]
    return found


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...: not ours to check here
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not linked.exists():
            problems.append(
                f"{where}: no such file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}"
            )
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: {linked.name} has no heading whose anchor is #{anchor}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_leads_somewhere(path):
    assert broken_links(path) == []


def test_the_slug_rules_are_githubs():
    assert slug("Data pipeline: SQL, the promotion gate, Airflow") == "data-pipeline-sql-the-promotion-gate-airflow"
    assert slug("Reliability against anonymous clients (issue 16)") == "reliability-against-anonymous-clients-issue-16"
    assert slug("The `penguins` command") == "the-penguins-command"
    assert slug("Compose: the `s3` profile") == "compose-the-s3-profile"
    assert slug("Add [your own](x.md) classifier") == "add-your-own-classifier"
    assert slug("snake_case and C++") == "snake_case-and-c"


def test_the_checker_finds_a_broken_anchor_and_a_missing_file(tmp_path, monkeypatch):
    import tests.test_docs_links as checker

    monkeypatch.setattr(checker, "ROOT", tmp_path)
    (tmp_path / "a.md").write_text(
        "# Title\n\n## Two words\n\n[ok](#two-words) [ok](b.md#b) [bad](#nope) [gone](c.md)\n"
        "```\n[in code](#ignored)\n```\n`[in a span](#ignored)`\n"
    )
    (tmp_path / "b.md").write_text("# B\n")
    assert [p.split(": ", 1)[1] for p in broken_links(tmp_path / "a.md")] == [
        "#nope: a.md has no heading whose anchor is #nope",
        "c.md: no such file c.md",
    ]


def test_the_shown_answer_is_compared_digit_for_digit():
    comment = (
        '# [{"species": "Gentoo", "probabilities": {"Adelie": 0.0, "Gentoo": 0.99},\n#   "model": "penguins-x:abc"}]'
    )
    assert_shown_answer(
        comment, [{"species": "Gentoo", "probabilities": {"Adelie": 0.0, "Gentoo": 0.9912}, "model": "penguins-x:zz"}]
    )
    for wrong in (
        [{"species": "Adelie", "probabilities": {"Adelie": 0.0, "Gentoo": 0.99}, "model": "penguins-x:zz"}],
        [{"species": "Gentoo", "probabilities": {"Adelie": 0.0, "Gentoo": 1.0}, "model": "penguins-x:zz"}],
        [{"species": "Gentoo", "probabilities": {"Adelie": 0.0, "Gentoo": 0.99}, "model": "penguins-y:zz"}],
        [{"species": "Gentoo", "probabilities": {"Adelie": 0.0, "Gentoo": 0.99}, "model": "penguins-x:zz", "more": 1}],
    ):
        with pytest.raises(AssertionError):
            assert_shown_answer(comment, wrong)
