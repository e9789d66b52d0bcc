"""A self-contained HTML page: inline CSS, every plot a base64 PNG data URI, no scripts, no URLs."""

from __future__ import annotations

import base64
from html import escape

from dynamiccl.report.sections import Section

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1300px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
nav ul { columns: 2; }
.headline { background: #f3f6fa; border-left: 4px solid #36c; padding: .6em 1em; }
.note { background: #fff6e0; border-left: 4px solid #e0a000; padding: .4em 1em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
th { background: #eee; }
td:first-child, th:first-child { text-align: left; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: .6em; overflow-x: auto; font-size: 0.8em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _block(kind: str, payload) -> str:
    if kind == "p":
        return f"<p>{escape(payload)}</p>"
    if kind == "note":
        return f'<p class="note">{escape(payload)}</p>'
    if kind == "headline":
        return '<div class="headline"><ul>' + "".join(f"<li>{escape(item)}</li>" for item in payload) + "</ul></div>"
    if kind == "pre":
        return f"<pre>{escape(payload)}</pre>"
    if kind == "table":
        return _table(*payload)
    if kind == "plot":
        name, png, caption = payload
        return (f'<figure id="plot-{escape(name)}"><img alt="{escape(caption)}" src="{data_uri(png)}">'
                f"<figcaption>{escape(caption)}</figcaption></figure>")
    raise ValueError(f"unknown block kind {kind!r}")


def render(title: str, sections: list[Section]) -> str:
    """The whole page."""
    nav = "".join(f'<li><a href="#{s.id}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{escape(s.title)}</h2>'
                   + "".join(_block(kind, payload) for kind, payload in s.blocks) + "</section>"
                   for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1><nav><ul>{nav}</ul></nav>{body}"
            "</body></html>\n")
