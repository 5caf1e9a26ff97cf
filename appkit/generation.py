"""Generated text as HTML: speculative drafts the full model accepted or rejected, and a speed table."""

from __future__ import annotations

import html
import math

import pandas as pd

from appkit.style import DEEP, SHALLOW
from appkit.tokens import TOKEN_CSS, _rgba, _show, _text

REJECTED = "#7570b3"  # the first of the model colours: neither path's
SPECULATIVE_CSS = "<style>.routed-text .rejected{text-decoration:line-through;opacity:.75}</style>"


def speculative_html(tokens, early_exit: int) -> str:
    """Speculative output as escaped HTML: accepted drafts, the full model's own tokens, and the drafts they replaced.

    A rejected draft is drawn struck through just before the token the full model put in its place.
    """
    spans = []
    for t in tokens:
        if t.rejected_id is not None:
            tip = html.escape(f"draft {_show(t.rejected_text)} from exit {early_exit}: rejected by the full model")
            spans.append(f'<span class="tok rejected" style="background:{_rgba(REJECTED, 0.45)}">'
                         f'{_text(t.rejected_text) or "∅"}<span class="tip">{tip}</span></span>')
        if t.drafted:
            colour = _rgba(SHALLOW, 0.8)
            tip = f"{_show(t.text)}: drafted by exit {early_exit} (confidence {t.confidence:.3f}), accepted"
        else:
            colour = _rgba(DEEP, 0.8)
            conf = "" if math.isnan(t.confidence) else f"; exit {early_exit} confidence {t.confidence:.3f}"
            tip = f"{_show(t.text)}: the full model's own token (exit {t.exit_layer}){conf}"
        spans.append(f'<span class="tok" style="background:{colour}">{_text(t.text)}'
                     f'<span class="tip">{html.escape(tip)}</span></span>')
    legend = (
        f'<div class="routed-legend"><span style="background:{_rgba(SHALLOW, 0.8)}">accepted draft (exit {early_exit})'
        f'</span><span style="background:{_rgba(DEEP, 0.8)}">full model\'s token</span>'
        f'<span class="rejected" style="background:{_rgba(REJECTED, 0.45)}">rejected draft</span> hover a token</div>'
    )
    return TOKEN_CSS + SPECULATIVE_CSS + legend + '<div class="routed-text">' + "".join(spans) + "</div>"


def speed_table(runs: dict) -> pd.DataFrame:
    """One row per generation mode: tokens/s and the ratio to plain decoding (runs: mode -> Generation)."""
    plain = runs["plain"].tokens_per_s if "plain" in runs else float("nan")
    rows = []
    for mode, gen in runs.items():
        row = {"mode": mode, "tokens/s": round(gen.tokens_per_s, 1),
               "× plain": round(gen.tokens_per_s / plain, 2) if plain else float("nan")}
        if hasattr(gen, "acceptance_rate"):
            row["acceptance %"] = round(100 * gen.acceptance_rate, 1)
            row["accepted drafts / verification"] = round(gen.mean_accepted_length, 2)
        rows.append(row)
    return pd.DataFrame(rows).set_index("mode")


MODES = ("speculative", "routed", "plain")


def exits_of(ckpt) -> list[int]:
    """The exits generation routes between: a routed model's trained exits, a pretrained model's read-outs."""
    from routed.model import RoutedTransformer
    from routed.records import model_exits
    from routed.sparse import trained_exits

    if isinstance(ckpt.model, RoutedTransformer):
        return trained_exits(ckpt.train_config, ckpt.model_config.n_layers)
    return model_exits(ckpt.model, None)


def generate_modes(ckpt, ids: list[int], max_new: int, threshold, chosen: str, draft_k, kv_policy: str,
                   temperature: float, top_k, on_token=None) -> tuple[dict, dict]:
    """Generate from ids in the chosen mode (streamed to on_token) and then in the others, for their speeds.

    Returns ({mode: Generation}, {mode: why it could not run}); the chosen mode comes first.
    """
    from routed.generate import generate
    from routed.hf_generate import generate_pretrained
    from routed.model import RoutedTransformer
    from routed.speculative import speculative_generate
    from routed.tokenizer import decode

    own = isinstance(ckpt.model, RoutedTransformer)
    exits = exits_of(ckpt)
    options = dict(temperature=temperature, top_k=top_k or None, decode=lambda i: decode(ckpt.tokenizer, i))
    runs, errors = {}, {}
    for mode in [chosen] + [m for m in MODES if m != chosen]:
        stream = on_token if mode == chosen else None
        if mode == "routed" and len(exits) < 2:
            errors[mode] = f"this model has one exit (layer {exits[0]}): nothing to route"
            continue
        if not own and mode == "speculative":
            errors[mode] = "speculative decoding needs routed's own transformer (its shared KV cache)"
            continue
        try:
            if not own:  # a pretrained model: no KV cache; each step runs up to its exit
                runs[mode] = generate_pretrained(ckpt.model, ids, max_new, threshold if mode == "routed" else None,
                                                 exits, on_token=stream, **options)
            elif mode == "speculative":
                runs[mode] = speculative_generate(ckpt.model, ids, max_new, threshold, draft_k, exits,
                                                  on_token=stream, **options)
            elif mode == "routed":
                runs[mode] = generate(ckpt.model, ids, max_new, threshold, "sparse", exits, kv_policy=kv_policy,
                                      on_token=stream, **options)
            else:
                runs[mode] = generate(ckpt.model, ids, max_new, None, "plain", exits, on_token=stream, **options)
        except ValueError as exc:
            errors[mode] = str(exc)
    return runs, errors
