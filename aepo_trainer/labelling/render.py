"""Prompts and completions as safe HTML: Markdown rendered on the server, raw HTML never passed through.

Completions are model output, i.e. untrusted text: a `<script>` or an `onerror=` in a completion must show as text on
the page, never run. markdown-it-py (the CommonMark parser the Jupyter and MkDocs ecosystems use) is configured with
`html=False`: every raw HTML block or inline tag in the source is escaped into visible text, attribute values are
escaped, and its link validator refuses `javascript:`, `vbscript:`, `file:` and non-image `data:` URLs. The page
then inserts this HTML as is, and everything else (names, ids) as text. The page's Content-Security-Policy
(`script-src 'self'`, no inline script, images from the page's own origin only) is the second wall: even a parser bug
could not run a script or load a tracking image.
"""

from __future__ import annotations

from functools import lru_cache
from html import escape
from typing import Any

__all__ = ["render_markdown", "render_turns"]


@lru_cache(maxsize=1)
def _parser():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")


def render_markdown(text: str) -> str:
    """HTML of one Markdown text, raw HTML escaped (shown as text)."""
    return _parser().render(str(text))


def render_turns(value: Any) -> str:
    """HTML of a prompt or completion: a string is one Markdown text; a list of chat messages becomes one block per
    message, headed by its role."""
    if isinstance(value, str):
        return render_markdown(value)
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        blocks = []
        for message in value:
            content = message.get("content", "")
            if isinstance(content, list):  # multimodal blocks: their text parts
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
            role = escape(str(message.get("role", "")))
            blocks.append(
                f'<div class="turn"><div class="role">{role}</div><div class="md">{render_markdown(content)}</div></div>'
            )
        return "".join(blocks)
    return render_markdown(str(value))
