"""A small self-contained HTML assembler: sections of text, tables and embedded PNGs.

Every image is embedded as a base64 ``data:`` URI, so a page opens offline and can be copied
alone; links point only to files beside it (relative paths). Text is always escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

STYLE = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#222;
line-height:1.4}
nav{position:sticky;top:0;background:#263238;padding:.4em 1em;z-index:2}
nav a{color:#eceff1;margin-right:1.1em;text-decoration:none;font-size:.92em}
main{max-width:1100px;margin:auto;padding:0 1.2em 3em}
h1{font-size:1.6em;margin:.8em 0 .2em}h2{border-bottom:2px solid #90a4ae;padding-top:.6em}
h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #cfd8dc;padding:.25em .6em;text-align:left}
th{background:#eceff1}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.8em 0}figure img{max-width:100%;border:1px solid #eceff1}
figcaption{font-size:.88em;color:#455a64}
.warn{background:#fff3e0;border-left:4px solid #fb8c00;padding:.4em .8em;margin:.3em 0}
.ok{background:#e8f5e9;border-left:4px solid #43a047;padding:.4em .8em;margin:.3em 0}
pre{background:#f5f5f5;padding:.6em;overflow-x:auto;font-size:.82em}
.meta{color:#546e7a;font-size:.9em}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 3) -> str:
    """A table cell: floats rounded, None/NaN as "n/a"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v, digits) for v in value) + "]"
    return str(value)


def para(text: str, cls: str | None = None) -> str:
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<p{attr}>{esc(text)}</p>"


def note(text: str, kind: str = "warn") -> str:
    return f'<div class="{esc(kind)}">{esc(text)}</div>'


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def link(href: str, text: str) -> str:
    """A link to a file beside the page (a relative path, never a URL)."""
    if "://" in href or href.startswith("//"):
        raise ValueError(f"reports link only to local files, not {href}")
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def bullet_list(items: Iterable[str], raw: bool = False) -> str:
    """A list; ``raw`` items are HTML already (e.g. links), others are escaped."""
    return "<ul>" + "".join(f"<li>{i if raw else esc(i)}</li>" for i in items) + "</ul>"


def table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None,
          digits: int = 3) -> str:
    """A table of ``rows`` (dicts) in ``columns`` order; numbers right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in (headers or columns))
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{esc(fmt(v, digits))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def image(png: bytes, alt: str, caption: str | None = None) -> str:
    """A PNG embedded as a data URI, with a caption."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


@dataclass
class Section:
    """One titled part of a page; ``blocks`` are HTML fragments made by this module."""

    anchor: str
    title: str
    blocks: list[str] = field(default_factory=list)

    def add(self, *blocks: str) -> Section:
        self.blocks.extend(blocks)
        return self

    def render(self) -> str:
        return (f'<section id="{esc(self.anchor)}"><h2>{esc(self.title)}</h2>'
                + "\n".join(self.blocks) + "</section>")


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """A whole HTML document with a navigation bar over ``sections``."""
    nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(s.render() for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<nav>{nav}</nav><main><h1>{esc(title)}</h1>"
            f'<p class="meta">{esc(subtitle)}</p>\n{body}</main></body></html>\n')
