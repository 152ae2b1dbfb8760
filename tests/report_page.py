"""Reading a report page back as a reader (or a browser) sees it: its selection, its figures."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html import unescape
from pathlib import Path

import yaml


def page_patterns(html: str) -> list[str]:
    """The selection list the page shows, in order."""
    return [unescape(p) for p in re.findall(r"<code class=pattern>(.*?)</code>", html)]


def figures(html: str) -> dict[str, int]:
    """{figure kind: how many} on the page."""
    kinds: dict[str, int] = {}
    for kind in re.findall(r"<figure class=(\w+)>", html):
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def check_page(page: Path, select_patterns: list[str]) -> str:
    """The page, its SVGs well-formed, no external resource, its list and YAML equal select's."""
    assert page.name == "index.html" and page.is_file()
    html = page.read_text(encoding="utf-8")
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert svgs, "the page shows no picture"
    for s in svgs:
        ET.fromstring(s)  # well-formed XML, or a broken picture
    assert not re.search(r'(src|href)="(https?:)?//', html), "external resource"
    assert "<script" not in html
    assert page_patterns(html) == select_patterns
    beside = yaml.safe_load((page.parent / "selection.yaml").read_text())
    assert beside["unfrozen_parameters"] == select_patterns
    assert 'href="selection.yaml"' in html
    return html
