"""Generated text as HTML: tokens coloured by their exit, with the numbers behind each in a tooltip;
and how a token is shown (hidden characters as escapes)."""

from __future__ import annotations

import html
import re

from appkit.style import DEEP, SHALLOW

TOKEN_CSS = """<style>
.routed-text{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9rem;line-height:2;word-break:break-word}
.routed-text .tok{position:relative;border-radius:3px;cursor:default}
.routed-text .tok .tip{visibility:hidden;position:absolute;left:0;top:1.7em;z-index:1000;white-space:pre;
 background:#262730;color:#fafafa;font-size:.75rem;line-height:1.35;padding:6px 8px;border-radius:4px;box-shadow:0 2px 6px #0005}
.routed-text .tok:hover .tip{visibility:visible}
.routed-legend span{padding:1px 6px;border-radius:3px;margin-right:6px}
</style>"""


def _rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:.2f})"


def _show(token: str) -> str:
    return repr(token)  # quoted, so spaces and newlines are visible


# Control characters (but tab, newline, CR) are invisible or dropped in HTML, and bidi overrides
# would reorder the text after them: the heatmap shows them as escapes, e.g. \x00 or \u202e.
_HIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(token: str) -> str:
    """A token with its hidden characters written as escapes (e.g. \\x00, \\u202e)."""
    return _HIDDEN.sub(lambda m: repr(m.group())[1:-1], token)


def _text(token: str) -> str:
    """A token as HTML text: escaped, its hidden characters made visible."""
    return html.escape(visible(token))


def generated_html(tokens, first_exit: int) -> str:
    """Generated tokens as escaped HTML spans in the path colours (shade = first-exit confidence)."""
    spans = []
    for t in tokens:
        colour = _rgba(SHALLOW if t.exit_layer == first_exit else DEEP, 0.15 + 0.85 * t.confidence)
        tip = html.escape(f"{_show(t.text)}: exit at layer {t.exit_layer}, confidence {t.confidence:.3f}")
        spans.append(f'<span class="tok" style="background:{colour}">{_text(t.text)}<span class="tip">{tip}</span></span>')
    return TOKEN_CSS + '<div class="routed-text">' + "".join(spans) + "</div>"


