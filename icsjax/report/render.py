"""The report as a list of blocks, written out as Markdown and as one HTML file.

Both formats come from the same blocks, so they say the same thing; the HTML
embeds its figures as base64 data URIs and its style inline, so the single
file can be mailed or archived without the folder beside it.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re


@dataclasses.dataclass(frozen=True)
class Heading:
  text: str
  level: int = 2


@dataclasses.dataclass(frozen=True)
class Para:
  text: str  # `code` spans and **bold** are the only markup


@dataclasses.dataclass(frozen=True)
class Note:
  """A warning a reader must not miss (few seeds, a smoke-scale study)."""
  text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
  items: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
  header: tuple[str, ...]
  rows: tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Image:
  file: str  # relative to the report folder
  caption: str


@dataclasses.dataclass(frozen=True)
class Code:
  text: str


def markdown(title: str, blocks) -> str:
  out = [f"# {title}", ""]
  for b in blocks:
    if isinstance(b, Heading):
      out += ["#" * b.level + " " + b.text, ""]
    elif isinstance(b, Para):
      out += [b.text, ""]
    elif isinstance(b, Note):
      out += [f"> **Warning:** {b.text}", ""]
    elif isinstance(b, Bullets):
      out += [f"- {item}" for item in b.items] + [""]
    elif isinstance(b, Table):
      cell = lambda s: str(s).replace("|", "\\|")
      out += ["| " + " | ".join(map(cell, b.header)) + " |",
              "|" + "---|" * len(b.header)]
      out += ["| " + " | ".join(map(cell, r)) + " |" for r in b.rows] + [""]
    elif isinstance(b, Image):
      out += [f"![{_alt(b.caption)}]({b.file})", "", f"*{b.caption}*", ""]
    elif isinstance(b, Code):
      out += ["```", b.text.rstrip("\n"), "```", ""]
    else:
      raise TypeError(f"unknown block {b!r}")
  return "\n".join(out)


def _alt(caption: str) -> str:
  """A figure's alt text: the first sentence of its caption."""
  return caption.split(". ")[0].split(": ")[0]


def _inline(text: str) -> str:
  """Escapes text, then turns `code` and **bold** into tags."""
  t = html.escape(text)
  t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
  return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.note { border-left: 4px solid #d9822b; background: #fff6ec; padding: 0.5em 0.9em; }
figure { margin: 1em 0 1.6em; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #444; }
code, pre { background: #f5f5f5; font-size: 0.9em; } pre { padding: 0.6em; overflow-x: auto; }
"""


def _data_uri(path) -> str:
  return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def html_page(title: str, blocks, folder) -> str:
  out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
         f"<h1>{html.escape(title)}</h1>"]
  for b in blocks:
    if isinstance(b, Heading):
      out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
    elif isinstance(b, Para):
      out.append(f"<p>{_inline(b.text)}</p>")
    elif isinstance(b, Note):
      out.append(f'<p class="note"><strong>Warning:</strong> {_inline(b.text)}</p>')
    elif isinstance(b, Bullets):
      out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
    elif isinstance(b, Table):
      head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
      body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                     for r in b.rows)
      out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    elif isinstance(b, Image):
      out.append(f'<figure><img src="{_data_uri(folder / b.file)}" '
                 f'alt="{html.escape(_alt(b.caption))}"><figcaption>{_inline(b.caption)}'
                 f"</figcaption></figure>")
    elif isinstance(b, Code):
      out.append(f"<pre>{html.escape(b.text)}</pre>")
    else:
      raise TypeError(f"unknown block {b!r}")
  out.append("</body></html>")
  return "\n".join(out)
