"""python -m routed lens | reliability: every exit's prediction per token, and how well confidence predicts it."""

from __future__ import annotations

import json

from routed.cli.evaluate import load


def cmd_lens(args) -> int:
    from routed.lens_text import lens_text
    from routed.tokenizer import token_strings

    ckpt = load(args)
    seen = lens_text(ckpt.model, ckpt.tokenizer, args.text)
    rec = seen.records
    for line in seen.notes():
        print(f"note: {line}")
    settle = rec.settling()
    ids = sorted({int(i) for i in rec.top1.ravel()})
    strings = dict(zip(ids, token_strings(ckpt.tokenizer, ids)))
    if args.json:
        rows = [{"token": seen.tokens[i + 1], "settling_depth": int(settle[i]),
                 "layers": {layer: {"top1": strings[int(rec.top1[r, i])], "top1_prob": float(rec.top1_prob[r, i]),
                                    "true_prob": float(rec.true_prob[r, i]), "true_nll": float(rec.true_nll[r, i]),
                                    "true_rank": int(rec.true_rank[r, i]), "agrees_last": bool(rec.agrees_last[r, i])}
                            for r, layer in enumerate(rec.layers)}}
                for i in range(len(rec))]
        print(json.dumps({"checkpoint": str(ckpt.path), "windows": seen.windows, "notes": seen.notes(), "tokens": rows}, indent=2))
        return 0
    print(f"{'token':<16} {'settles':>7}" + "".join(f"  {'L' + str(layer) + ' top-1 (p)':<22}" for layer in rec.layers)
          + "  true token: p / rank per layer")
    print(f"{seen.tokens[0]!r:<16} {'(context)':>7}")
    for i in range(len(rec)):
        tops = "".join(f"  {strings[int(rec.top1[r, i])]!r:<14} ({rec.top1_prob[r, i]:.2f})" for r in range(len(rec.layers)))
        truth = " ".join(f"{rec.true_prob[r, i]:.2f}/{rec.true_rank[r, i]}" for r in range(len(rec.layers)))
        print(f"{seen.tokens[i + 1]!r:<16} {settle[i]:>7}{tops}  {truth}")
    return 0


def cmd_reliability(args) -> int:
    from routed.diagnostics import compute_diagnostics, diagnostics_for_checkpoint, write_diagnostics

    ckpt = load(args)
    diag = compute_diagnostics(ckpt) if args.write else diagnostics_for_checkpoint(ckpt)
    if args.write:
        print(f"wrote {write_diagnostics(ckpt.path, diag)}")
    if args.json:
        splits = diag["splits"]
        print(json.dumps({s: {"tokens": splits[s]["tokens"], "accuracy": splits[s]["accuracy"],
                              "ece": {layer: {m: v["ece"] for m, v in table.items()} for layer, table in splits[s]["reliability"].items()}}
                          for s in splits}, indent=2))
        return 0
    print(f"{ckpt.name} on {diag['corpus']}: expected calibration error ({diag['n_bins']} bins) of each exit's confidence "
          "as the probability that its top-1 is the next token; corpus markers left out")
    for split, data in diag["splits"].items():
        measures = list(data["reliability"][str(diag["layers"][0])])
        print(f"\n{split} ({data['tokens']:,} tokens)\n| exit | accuracy |" + "".join(f" ECE {m} |" for m in measures))
        print("|---|---|" + "---|" * len(measures))
        for layer, table in data["reliability"].items():
            print(f"| {layer} | {data['accuracy'][layer]:.3f} |" + "".join(
                f" {table[m]['ece']:.4f} |" if m in table else " |" for m in measures))
    if diag.get("probe_train_tokens"):
        print(f"\nprobe: logistic regression on layer {diag['layers'][0]}'s state, fitted on {diag['probe_train_tokens']:,} train tokens")
    return 0


def register(sub) -> None:
    p = sub.add_parser("lens", help="every exit's top-1, its probability and the true token's rank, token by token")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--text", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("reliability", help="calibration (ECE) of every exit and confidence measure on validation and test")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--write", action="store_true", help="compute and write diagnostics.json into the checkpoint folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reliability)
