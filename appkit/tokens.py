"""Texts as HTML: tokens coloured by their path, with the numbers behind each in a tooltip."""

from __future__ import annotations

import html
import re

import numpy as np

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


def _text(token: str) -> str:
    """A token as HTML text: escaped, its hidden characters made visible."""
    return html.escape(_HIDDEN.sub(lambda m: repr(m.group())[1:-1], token))


HEATMAP_TOKENS = 5_000  # tokens drawn in a heatmap; more make a page of tens of MB


def token_html(
    result, strings: dict, shallow: np.ndarray, threshold: float, measure: str, max_tokens: int = HEATMAP_TOKENS
) -> str:
    """The text as escaped HTML spans: colour = path, shade = confidence, tooltip = the numbers.

    Only the first `max_tokens` tokens are drawn (say so beside it when len(result.tokens) is larger).
    """
    rec = result.records
    conf = rec.confidence[measure]
    exits = [(rec.early_exit, "shallow"), (rec.final_exit, "deep")]
    spans = [
        f'<span class="tok ctx">{_text(result.tokens[0])}<span class="tip">first token: context only</span></span>'
    ]
    for i, token in enumerate(result.tokens[1:max_tokens]):
        path = "shallow" if shallow[i] else "deep"
        lines = [f"{_show(token)!s}: {path} path, {measure} {conf[i]:.3f} {'≥' if shallow[i] else '<'} {threshold:.2f}"]
        for layer, label in exits:
            lines.append(f"exit {layer} ({label}): NLL {rec.nll[layer][i]:.2f}")
            if rec.top_ids is not None:
                tops = zip(rec.top_ids[layer][i], rec.top_probs[layer][i])
                lines.append("   " + "  ".join(f"{_show(strings.get(int(t), '?'))} {p:.2f}" for t, p in tops))
        colour = _rgba(SHALLOW if shallow[i] else DEEP, 0.15 + 0.85 * float(conf[i]))
        tip = html.escape("\n".join(lines))
        spans.append(
            f'<span class="tok {path}" style="background:{colour}">{_text(token)}<span class="tip">{tip}</span></span>'
        )
    legend = (
        f'<div class="routed-legend"><span style="background:{_rgba(SHALLOW, 0.8)}">shallow (exit after layer {rec.early_exit})</span>'
        f'<span style="background:{_rgba(DEEP, 0.8)}">deep (all layers)</span> darker = more confident; hover a token</div>'
    )
    return TOKEN_CSS + legend + '<div class="routed-text">' + "".join(spans) + "</div>"


def generated_html(tokens, first_exit: int) -> str:
    """Generated tokens as escaped HTML spans in the path colours (shade = first-exit confidence)."""
    spans = []
    for t in tokens:
        colour = _rgba(SHALLOW if t.exit_layer == first_exit else DEEP, 0.15 + 0.85 * t.confidence)
        tip = html.escape(f"{_show(t.text)}: exit at layer {t.exit_layer}, confidence {t.confidence:.3f}")
        spans.append(f'<span class="tok" style="background:{colour}">{_text(t.text)}<span class="tip">{tip}</span></span>')
    return TOKEN_CSS + '<div class="routed-text">' + "".join(spans) + "</div>"


