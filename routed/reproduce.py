"""Regenerate the research notes' tables: every preset over seeds, at one converged budget.

Each (run, seed) is trained into OUT/runs/<run>-s<seed>/ (checkpoint/ and train.json: the history and
how training ended), then evaluated on the test split (result.json, sweep.csv, blocks.npz; see
routed.reproduce_eval). Finished steps are kept, so an interrupted reproduction resumes where it
stopped, and a run whose evaluation is older than this version is evaluated again without retraining.
The report (routed.report) is rewritten after every run. Several processes may share one folder.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from routed.claims import claim, release
from routed.config import PRESETS, ModelConfig, TrainConfig, trained_as
from routed.data import load_corpus
from routed.files import MB, read_json
from routed.notes import ALPHAS
from routed.tokenizer import encode, load_tokenizer, train_tokenizer


@dataclass
class ReproduceSettings:
    corpus: str = "wikitext-2"
    seeds: int = 3
    epochs: float | None = None  # the default budget when neither epochs nor steps is given: DEFAULT_EPOCHS
    steps: int | None = None
    quick: bool = False  # a minutes-long miniature: small model, short runs, 2 seeds
    alphas: bool = True
    alpha_schedules: list = field(default_factory=lambda: [[0.9, 0.5]])  # dynamic alpha: [start, end]
    vocab_size: int | None = None  # model-size overrides (None: the defaults, or the quick miniature's)
    d_model: int | None = None
    n_heads: int | None = None

    def model_config(self) -> ModelConfig:
        base = ModelConfig(vocab_size=512, d_model=64, n_heads=2, context_length=64) if self.quick else ModelConfig()
        overrides = {k: v for k, v in (("vocab_size", self.vocab_size), ("d_model", self.d_model), ("n_heads", self.n_heads)) if v}
        return replace(base, **overrides)

    def budget(self) -> dict:
        """The TrainConfig fields every run shares: its length, how often it is validated, and no early stop.

        Every run trains its whole budget (the best validated weights are kept): a patience rule stops runs on
        validation noise while the learning rate is still high (a 16-epoch WikiText-2 run stopped at step
        5,875 of 11,472, at a PPL worse than the 8-epoch run's), and the budget would no longer be one.
        """
        if self.quick:
            return {"steps": self.steps or 30, "epochs": None, "eval_interval": 15, "batch_size": 16, "patience": None}
        if self.steps is not None:
            return {"steps": self.steps, "epochs": None, "eval_interval": max(1, self.steps // 12), "patience": None}
        return {"steps": None, "epochs": self.epochs or DEFAULT_EPOCHS, "eval_interval": 125, "patience": None}

    def run_defining(self) -> dict:
        """The settings that change what a finished run means (seeds and the alpha sweep only add runs)."""
        return {k: v for k, v in asdict(self).items() if k not in ("seeds", "alphas", "alpha_schedules")}


# The longest budget measured on WikiText-2 at the default size (reports/convergence.md): 8.7% better than
# 8 epochs, yet Standard 3L's validation PPL still fell 5.3% over its last fifth, so even this budget is
# flagged "not converged"; each run's report says how far from flat it ended.
DEFAULT_EPOCHS = 16.0


@dataclass(frozen=True)
class Run:
    """One model to train: a preset (lpt_routing shares lpt's model), a fixed alpha or an alpha schedule."""

    name: str
    layer_weights: dict
    routing_threshold: float | None
    n_layers: int = 3
    final_layer_weights: dict | None = None  # dynamic alpha: the weights at the last step


def planned_runs(settings: ReproduceSettings) -> list[Run]:
    runs = [
        Run(p.name, dict(p.layer_weights), p.routing_threshold, p.n_layers)
        for p in PRESETS.values()
        if trained_as(p.name) == p.name  # lpt_routing is lpt's training; only the threshold differs
    ]
    if settings.alphas:
        runs += [
            Run(f"alpha_{a:g}", {1: a, 2: 0.0, 3: round(1 - a, 6)}, 0.95)
            for a in ALPHAS
            if a not in (0.5, 0.7)  # standard_routing and asymmetric_best are those alphas
        ]
        runs += [
            Run(f"alpha_{a0:g}to{a1:g}", {1: a0, 3: round(1 - a0, 6)}, 0.95,
                final_layer_weights={1: a1, 3: round(1 - a1, 6)})
            for a0, a1 in settings.alpha_schedules
        ]
    return runs


def schedule(settings: ReproduceSettings) -> list[tuple[Run, int]]:
    """Every preset at seed 0 first (the shipped checkpoints), then the other seeds, then the alphas."""
    runs = planned_runs(settings)
    presets = [r for r in runs if r.name in PRESETS]
    alphas = [r for r in runs if r.name not in PRESETS]
    seeds = range(settings.seeds if not settings.quick else min(settings.seeds, 2))
    return [(r, s) for s in seeds for r in presets] + [(r, s) for s in seeds for r in alphas]


def progress(out: Path) -> str:
    """A reproduction folder in a few words: its corpus, budget and finished runs, e.g.
    "wikitext-2, 16 epochs: 4 of 21 runs" ("" where the folder holds no readable settings)."""
    try:
        settings = saved_settings(out)
        plan = schedule(settings)
    except (ValueError, TypeError):
        return ""
    budget = settings.budget()
    length = f"{budget['steps']:,} steps" if budget["steps"] else f"{budget['epochs']:g} epochs"
    done = sum((out / "runs" / f"{run.name}-s{seed}" / "result.json").is_file() for run, seed in plan)
    return f"{settings.corpus}, {length}: {done} of {len(plan)} runs"


def train_config_of(run: Run, seed: int, settings: ReproduceSettings) -> TrainConfig:
    return TrainConfig(layer_weights=run.layer_weights, final_layer_weights=run.final_layer_weights,
                       routing_threshold=run.routing_threshold, seed=seed, **settings.budget())


def saved_settings(out: Path) -> ReproduceSettings:
    """The settings a reproduction folder's runs were made with (a ValueError where they cannot be read)."""
    path = out / "settings.json"
    try:
        return ReproduceSettings(**read_json(path, MB, "settings.json"))
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"reproduce: {path} cannot be read ({exc}); use another --out folder") from exc


def check_settings(out: Path, settings: ReproduceSettings) -> None:
    """Refuse to mix runs of other settings into `out`; record the folder's plan there (these settings, with
    the most seeds and the alpha sweep of this invocation and the recorded one)."""
    path = out / "settings.json"
    plan = settings
    if path.is_file():
        saved = saved_settings(out)
        differs = {k: (v, settings.run_defining()[k]) for k, v in saved.run_defining().items()
                   if v != settings.run_defining()[k]}
        if differs:
            listed = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in differs.items())
            raise ValueError(f"reproduce: {out} holds runs made with other settings ({listed}); "
                             "use another --out folder or the same settings")
        # fewer seeds or no alpha sweep this time (e.g. only the seed-0 models, to export) keeps the folder's plan
        schedules = [*saved.alpha_schedules, *(s for s in settings.alpha_schedules if s not in saved.alpha_schedules)]
        plan = replace(settings, seeds=max(saved.seeds, settings.seeds), alphas=saved.alphas or settings.alphas,
                       alpha_schedules=schedules)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".settings.json.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(plan), indent=2))
    tmp.replace(path)


def prepare(settings: ReproduceSettings, out: Path):
    """The corpus, one shared tokenizer (saved in OUT) and the token ids of every split."""
    corpus = load_corpus(settings.corpus, max_chars=400_000 if settings.quick else None)
    tok_path = out / "tokenizer.json"
    if tok_path.exists():
        tokenizer = load_tokenizer(tok_path)
    else:
        tokenizer = train_tokenizer(corpus.train, settings.model_config().vocab_size, corpus.markers)
        tmp = tok_path.with_name(f".tokenizer.json.{os.getpid()}")
        tmp.write_text(tokenizer.to_str(), encoding="utf-8")
        tmp.replace(tok_path)
    ids = {split: encode(tokenizer, corpus.split(split)) for split in ("train", "validation", "test")}
    return corpus, tokenizer, ids


def train_run(run: Run, seed: int, settings: ReproduceSettings, corpus, tokenizer, ids, run_dir: Path, log) -> None:
    """Train one run and save its checkpoint and train.json (history, best step, time).

    The training state is saved at every validation (OUT/runs/<run>/.checkpoint.resume), so a run that was
    stopped part-way continues from its last validation, with the result of an uninterrupted run.
    """
    from routed.checkpoint import save_trained, train_state_path
    from routed.folders import TRAIN_STATE, remove_owned
    from routed.train import train

    model_config = replace(settings.model_config(), n_layers=run.n_layers, vocab_size=tokenizer.get_vocab_size())
    train_config = train_config_of(run, seed, settings)
    start, last_print, trained_s = time.perf_counter(), [0.0], [0.0]

    def on_progress(p):
        now = time.perf_counter()
        trained_s[0] = p.elapsed_s  # counts the time before a resume too
        if p.validation or now - last_print[0] > 60:
            last_print[0] = now
            val = f" val PPL {'/'.join(f'{v:.1f}' for v in p.validation['val_ppl'].values())}" if p.validation else ""
            log(f"  {run.name} s{seed}: step {p.step}/{p.total_steps} loss {p.train_loss:.3f} "
                f"{p.tokens_per_s:,.0f} tok/s ETA {p.eta_s / 60:.1f} min{val}")

    state = train_state_path(run_dir / "checkpoint")
    if (state / "state.json").is_file():
        log(f"  {run.name} s{seed}: resuming the interrupted training saved in {state}")
    result = train(model_config, train_config, corpus, tokenizer=tokenizer,
                   encoded=(ids["train"], ids["validation"]), on_progress=on_progress, state_dir=state, resume=True)
    if result.diverged:
        raise RuntimeError(f"{run.name} seed {seed}: training diverged ({result.diverged})")
    save_trained(run_dir / "checkpoint", result, extra={"preset": run.name})
    remove_owned(state, TRAIN_STATE.files)  # finished: nothing left to resume
    info = {"run": run.name, "seed": seed, "steps": result.history[-1]["step"] if result.history else 0,
            "best_step": result.best_step, "stopped_early": result.stopped_early,
            "train_s": max(trained_s[0], time.perf_counter() - start), "history": result.history}
    write_json(run_dir / "train.json", info)


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


def reproduce(settings: ReproduceSettings, out: Path, log=print, weights_of_seed: int | None = None) -> Path:
    """Train and evaluate every scheduled run (keeping finished steps), then write the report.

    weights_of_seed: the seed whose models are about to be exported. A finished run of that seed whose weights
    are not in the folder (a clone keeps results, not models) is trained again with the same seed and data order,
    and its new result is recorded beside the old one. Float results depend on the CPU, the number of threads,
    the library build and the code version that trained a model, so the new one can differ slightly from the lost
    one; the report then describes the new model, the one exported.
    """
    from routed.checkpoint import holds_checkpoint
    from routed.report import write_report
    from routed.reproduce_eval import EVAL_VERSION, evaluate_run
    from routed.reproduce_hypotheses import compute_hypotheses

    check_settings(out, settings)
    folder_plan = saved_settings(out)  # the folder's whole plan, which the report describes
    started = time.perf_counter()
    log(f"preparing corpus {settings.corpus!r} and its tokenizer ...")
    corpus, tokenizer, ids = prepare(settings, out)
    plan = schedule(settings)
    for i, (run, seed) in enumerate(plan, start=1):
        run_dir = out / "runs" / f"{run.name}-s{seed}"
        tag = f"[{i}/{len(plan)}] {run.name} seed {seed}"
        result_path = run_dir / "result.json"
        recorded = json.loads(result_path.read_text()) if result_path.exists() else None
        lost = recorded is not None and seed == weights_of_seed and not holds_checkpoint(run_dir / "checkpoint")
        if recorded is not None and recorded.get("eval_version") == EVAL_VERSION and not lost:
            log(f"{tag}: done earlier, kept")
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        if not claim(run_dir / "claim"):
            log(f"{tag}: being worked on by another process, skipped")
            continue
        try:
            if lost:
                log(f"{tag}: finished earlier, but its model is not in {run_dir}; training it again for the export")
            if not (run_dir / "train.json").exists() or not holds_checkpoint(run_dir / "checkpoint"):
                log(f"{tag}: training ...")
                train_run(run, seed, settings, corpus, tokenizer, ids, run_dir, log)
            log(f"{tag}: evaluating ...")
            result = evaluate_run(run, seed, run_dir, tokenizer, ids["test"])
            if lost:
                result["retrained"] = compare_with_recorded(result, recorded)
                log(f"{tag}: trained again; {result['retrained']['summary']}")
            write_json(result_path, result)  # written last: a run with a current result.json is complete
        finally:
            release(run_dir / "claim")
        log(f"{tag}: test PPL by exit {result['ppl_by_exit']} (markers left out), "
            f"trained in {result['train_s'] / 60:.1f} min")
        compute_hypotheses(out, tokenizer, ids["test"], log)  # once the seed-0 models it needs exist
        write_report(out, folder_plan, session_s=time.perf_counter() - started)
    compute_hypotheses(out, tokenizer, ids["test"], log)
    path = write_report(out, folder_plan, session_s=time.perf_counter() - started)
    log(f"report: {path}")
    return path


def compare_with_recorded(result: dict, recorded: dict) -> dict:
    """How a run trained again (its model was lost) compares with the result recorded for it."""
    old, new = recorded.get("ppl_by_exit", {}), result["ppl_by_exit"]
    shared = [k for k in new if isinstance(old.get(k), (int, float)) and old[k] > 0]
    largest = max((abs(new[k] / old[k] - 1) for k in shared), default=None)
    summary = (f"test PPL by exit {', '.join(f'{k}: {new[k]:.4f} (recorded {old[k]:.4f})' for k in shared)}; "
               f"largest relative difference {largest:.2e}" if largest is not None else "no recorded PPL to compare")
    return {"recorded_ppl_by_exit": old, "largest_relative_difference": largest, "summary": summary}
