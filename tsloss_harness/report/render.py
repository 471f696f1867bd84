"""The report on disk: one self-contained HTML file (figures inline as base64 PNG) or Markdown with
its figures as PNG files beside it."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path

from tsloss_harness.leaderboard import TABLE_CSS, markdown_table
from tsloss_harness.report.page import Report
from tsloss_harness.report.runs import ReportError


def _each_block(report: Report, render: dict[str, Callable[..., str]]) -> list[str]:
    """Each block of ``report``, in order, through the function for its kind (h2, p, table, figure)."""
    return [render[block[0]](*block[1:]) for block in report.blocks if block[0] in render]


def render_html(report: Report) -> str:
    def table(columns: list[str], rows: list[list]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    def figure(name: str, caption: str, png: bytes) -> str:
        data = base64.b64encode(png).decode("ascii")
        return (
            f'<figure id="{name}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    parts = [f"<h1>{html.escape(report.title)}</h1>"]
    parts += _each_block(
        report,
        {
            "h2": lambda text: f"<h2>{html.escape(text)}</h2>",
            "p": lambda text: f"<p>{html.escape(text)}</p>",
            "table": table,
            "figure": figure,
        },
    )
    css = TABLE_CSS + "figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(report.title)}</title>'
        f"<style>{css}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def render_markdown(report: Report, figure_dir: Path, link_prefix: str) -> str:
    """Markdown text; figures are written as PNG files into ``figure_dir`` and linked relatively."""

    def figure(name: str, caption: str, png: bytes) -> str:
        figure_dir.mkdir(parents=True, exist_ok=True)
        (figure_dir / f"{name}.png").write_bytes(png)
        return f"![{caption}]({link_prefix}/{name}.png)\n\n*{caption}*"

    parts = [f"# {report.title}"]
    parts += _each_block(
        report, {"h2": lambda text: f"## {text}", "p": lambda text: text, "table": markdown_table, "figure": figure}
    )
    return "\n\n".join(parts) + "\n"


def write_report(report: Report, output: str | Path, fmt: str | None = None) -> Path:
    """Write ``report`` as html (one self-contained file) or md (``<stem>_files/*.png`` beside it)."""
    output = Path(output)
    fmt = fmt or ("md" if output.suffix.lower() in (".md", ".markdown") else "html")
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        text = render_html(report)
    elif fmt == "md":
        figure_dir = output.with_name(f"{output.stem}_files")
        text = render_markdown(report, figure_dir, figure_dir.name)
    else:
        raise ReportError(f"unknown format {fmt!r} (html, md)")
    output.write_text(text)
    return output
