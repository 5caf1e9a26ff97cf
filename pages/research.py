"""Research tables: the notes' numbers beside ours, from the output folder of `python -m routed reproduce`."""

import re
import subprocess
import sys

import pandas as pd
import streamlit as st

import appkit
from routed.provenance import source_of
from routed.report import report_path
from routed.reproduce import progress

TABLES = {
    "verdicts.csv": "Verdicts on the notes' claims: effect (a − b), 95% CI and p of a paired test",
    "final_ranking.csv": "Final ranking: the notes against our runs (mean ± std over seeds; markers left out)",
    "convergence.csv": "Convergence: every run's best step, what its last fifth of training still gained, and what "
                       "training its preset on twice the tokens gained (where that was run: it then decides)",
    "threshold_standard_routing.csv": "Threshold analysis: standard routing",
    "threshold_lpt.csv": "Threshold analysis: LPT",
    "alpha_sweep.csv": "Alpha sweep (fixed alphas and schedules)",
}
LABELS = {  # column headers; columns not named here keep their CSV names
    "notes_ppl": "PPL (notes)",
    "ppl_mean": "PPL (ours, mean)",
    "ppl_std": "PPL (ours, std)",
    "notes_compute_pct": "Compute% (notes)",
    "compute_pct_mean": "Compute% (ours)",
    "notes_shallow_pct": "Shallow% (notes)",
    "shallow_pct_mean": "Shallow% (ours)",
    "flops_pct_mean": "FLOPs% (ours)",
    "notes_vs_3l": "vs 3L % (notes)",
    "vs_3l_pct": "vs 3L % (ours)",
    "shallow_ppl_mean": "shallow-only PPL",
    "deep_ppl_mean": "deep-only PPL",
    "n_seeds": "seeds",
    "ppl_all_tokens_mean": "PPL, all tokens",
    "shallow_pct_all_tokens_mean": "Shallow%, all tokens",
    "bpb_mean": "bits/byte",
    "bpb_at_095_mean": "bits/byte at .95",
    "converged_runs": "converged runs",
    "ci_low": "95% CI low",
    "ci_high": "95% CI high",
    "bootstrap_ci": "seed bootstrap 95% CI",
    "tail_gain_pct": "last fifth gained %",
    "doubling_gain_pct": "twice the tokens gained %",
}
RUNS = appkit.ROOT / "runs"  # quick reproductions go to runs/quick-<corpus>/ (git-ignored)


@st.cache_resource(max_entries=1)
def quick_runs() -> dict:
    """The quick reproduction started from this server process: {"proc": Popen, "out": Path}."""
    return {}


st.title("Research tables")
appkit.regime_caption()
main = appkit.reports_dir()
sources = {"full reproduction": main}
# Reproductions in other regimes sit beside it: reports/reproduction-<corpus>/ (see reports/regimes.md).
sources |= {f"full reproduction ({p.name.removeprefix(main.name + '-')})": p for p in appkit.reproduction_folders()[1:]}
budgets = main.parent / "convergence"  # benchmarks/convergence.py: each preset's validation PPL per token budget
if report_path(budgets).is_file():
    sources["training budgets: is a reproduction's budget long enough?"] = budgets
sources |= {f"quick run ({p.name.removeprefix('quick-')})": p for p in sorted(RUNS.glob("quick-*")) if p.is_dir()}
described = {k: " — ".join(filter(None, (k, progress(p)))) for k, p in sources.items()}  # budget and runs done
# Start from the reproduction that trained the chosen model, so its tables describe that model.
model = appkit.chosen_model()
home = source_of(appkit.config(model), list(sources.values())) if model and not model.startswith("hf:") else None
start = list(sources.values()).index(home) if home else 0
label = st.selectbox("Tables from", list(sources), index=start, format_func=described.get, key="research_source") \
    if len(sources) > 1 else ""
folder = sources.get(label, main)
st.caption(f"Folder: `{folder}`")

shown = 0
for file, title in TABLES.items():
    if (folder / file).is_file():
        st.subheader(title)
        try:
            table = pd.read_csv(folder / file)
            config = {c: LABELS[c] for c in table.columns if c in LABELS}
            if "p" in table.columns:  # p-values keep their small digits; other numbers two decimals
                config["p"] = st.column_config.NumberColumn("p", format="%.2g")
            st.dataframe(table.round({c: 2 for c in table.columns if c != "p"}), hide_index=True, column_config=config)
            shown += 1
        except (OSError, ValueError) as exc:  # pandas' ParserError is a ValueError
            st.error(f"{file}: cannot be read ({exc})")
for plot in sorted(folder.glob("*.png")):
    st.image(str(plot), caption=plot.name)
report = report_path(folder)
if report.is_file():
    with st.expander(report.name, expanded=not shown):  # its images are shown above
        st.markdown(re.sub(r"!\[[^\]]*\]\([^)]*\)", "", report.read_text(encoding="utf-8")))
elif not shown:
    st.info(
        f"No tables in `{folder}` yet. Produce them with `python -m routed reproduce` (every preset over 3 seeds; "
        "hours on a CPU), or run the minutes-long miniature below."
    )

st.subheader("Quick reproduction")
st.caption("`python -m routed reproduce --quick`: a small model, short runs, 2 seeds; minutes, in the background.")
run = quick_runs()
running = "proc" in run and run["proc"].poll() is None
corpora = {k: v for k, v in appkit.corpus_options().items() if v != "upload"}
left, right = st.columns([2, 1], vertical_alignment="bottom")
corpus = corpora[left.selectbox("Corpus", list(corpora), key="research_corpus")]
if right.button("Run the quick reproduction", disabled=running, key="research_run"):
    out = RUNS / f"quick-{corpus}"
    out.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "w") as log:
        command = [sys.executable, "-m", "routed", "reproduce", "--quick", "--corpus", corpus, "--out", str(out)]
        run.update(out=out, proc=subprocess.Popen(command, cwd=appkit.ROOT, stdout=log, stderr=subprocess.STDOUT))
    st.rerun()


@st.fragment(run_every=1.0 if running else None)
def progress() -> None:
    if "proc" not in run:
        return
    log = run["out"].with_suffix(".log")
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:] if log.is_file() else []
    code = run["proc"].poll()
    if code is None:
        st.info(f"Running into `{run['out']}`…")
    elif code == 0:
        st.success(f"Done: choose 'quick run ({run['out'].name.removeprefix('quick-')})' above to see its tables.")
    else:
        st.error(f"The quick reproduction failed (exit code {code}); its last lines are below.")
    st.code("\n".join(tail) or "(no output yet)", language=None)
    if (code is None) != running:  # it finished: redraw the page with its tables
        st.rerun()


progress()
