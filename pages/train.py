"""Train: queue training runs (a preset or custom layer weights) and watch them in the background."""

import time

import streamlit as st

import appkit
from routed.checkpoint import checkpoint_path
from routed.config import PRESETS, ModelConfig, TrainConfig
from routed.folders import MAX_NAME_BYTES, check_name
from routed.jobs import TrainJob

queue = appkit.job_queue()
corpora = appkit.corpus_options()

st.title("Train")
appkit.regime_caption()
with st.form("train_form"):
    mode = st.radio("Configuration", ["preset", "custom layer weights"], horizontal=True, key="train_mode")
    left, right = st.columns(2)
    describe = lambda p: f"{p}: {PRESETS[p].description}"  # noqa: E731
    preset = left.selectbox(
        "Preset", list(PRESETS), list(PRESETS).index("asymmetric_best"), describe, key="train_preset"
    )
    left.caption("A preset fixes its layer weights, threshold and layer count (3, or 1 for standard_1l).")
    alpha = right.slider("alpha: L1 weight α, last-layer weight 1−α", 0.0, 1.0, 0.7, 0.05, key="train_alpha")
    l2 = right.slider("L2 weight", 0.0, 1.0, 0.0, 0.05, key="train_l2")
    routing = right.checkbox("Routing (store a threshold)", value=True, key="train_routing")
    threshold = right.slider("Threshold", 0.0, 1.0, 0.95, 0.01, key="train_threshold")
    right.caption("These four apply to 'custom layer weights'; the last layer is L3 in a 3-layer model.")
    st.markdown("**Model size and budget**")
    c = st.columns(6)
    d_model = c[0].number_input("d_model", 8, 1024, 128, 8, key="train_d_model")
    n_layers = c[1].number_input("n_layers", 1, 12, 3, key="train_n_layers")
    n_heads = c[2].number_input("n_heads", 1, 16, 4, key="train_n_heads")
    context = c[3].number_input("context length", 8, 1024, 128, 8, key="train_context")
    vocab = c[4].number_input("vocabulary", 257, 32768, 4096, key="train_vocab")
    batch = c[5].number_input("batch size", 1, 256, 32, key="train_batch")
    c = st.columns(6)
    budget = c[0].radio("Budget", ["steps", "epochs"], key="train_budget")
    steps = c[1].number_input("steps", 1, 100_000, 240, key="train_steps")
    epochs = c[2].number_input("epochs", 0.01, 100.0, 1.0, 0.1, key="train_epochs")
    lr = c[3].number_input("learning rate", 1e-5, 1.0, 3e-3, 1e-4, format="%.4f", key="train_lr")
    seed = c[4].number_input("seed", 0, 2**31 - 1, 0, key="train_seed")
    eval_interval = c[5].number_input("validate every (steps)", 1, 10_000, 60, key="train_eval_interval")
    corpus_label = st.selectbox("Corpus", list(corpora), key="train_corpus")
    upload = st.file_uploader("The .txt file for 'upload a .txt file' (UTF-8)", type=["txt"], key="train_upload")
    name = st.text_input(
        "Checkpoint name", placeholder="empty: preset name and time", key="train_name",
        help=f"letters, digits and _ . + -; at most {MAX_NAME_BYTES} bytes",
    ).strip()
    submitted = st.form_submit_button("Queue training run", type="primary", key="train_submit")


def corpus_path() -> str:
    """The chosen corpus name, or the uploaded text saved as a file (its path is the corpus)."""
    if corpora[corpus_label] != "upload":
        return corpora[corpus_label]
    if upload is None:
        raise ValueError("corpus: choose 'upload a .txt file' only with a file uploaded")
    return appkit.save_upload(upload.name, upload.getvalue())


if submitted:
    try:
        size = dict(d_model=int(d_model), n_heads=int(n_heads), context_length=int(context), vocab_size=int(vocab))
        budget_args = {"steps": int(steps)} if budget == "steps" else {"steps": None, "epochs": float(epochs)}
        common = dict(
            learning_rate=float(lr),
            seed=int(seed),
            batch_size=int(batch),
            eval_interval=int(eval_interval),
            **budget_args,
        )
        if mode == "preset":
            model_config, train_config = PRESETS[preset].model_config(**size), PRESETS[preset].train_config(**common)
        else:
            layers = int(n_layers)
            weights = {1: alpha, layers: 1 - alpha} if layers > 1 else {1: 1.0}
            if l2 > 0 and layers == 2:
                raise ValueError("layer_weights: L2 is the last layer of a 2-layer model (weight 1−α); set the L2 weight to 0")
            weights |= {2: l2} if l2 > 0 else {}  # in a 1-layer model, check_model names the missing layer
            model_config = ModelConfig(n_layers=layers, **size)
            train_config = TrainConfig(
                layer_weights=weights, routing_threshold=threshold if routing else None, **common
            )
        train_config.check_model(model_config)
        name = check_name(name or f"{preset if mode == 'preset' else 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}")
        extra = {"preset": preset if mode == "preset" else None}
        queue.submit(TrainJob(model_config, train_config, corpus_path(), checkpoint_path(name), extra=extra))
        st.success(f"Queued {name}.")
    except ValueError as exc:  # CorpusError and CheckpointError included
        st.error(str(exc))

active = queue.active()


@st.fragment(run_every=1.0 if active else None)
def show_jobs() -> None:
    jobs = queue.jobs()
    if not jobs:
        st.caption("No training runs yet in this server process.")
    for job in jobs:
        with st.container(border=True):
            st.markdown(f"**{job.name}** · {job.status} · corpus `{job.corpus}`")
            if job.status == "running":
                eta = "…" if job.eta_s is None else f"{job.eta_s:.0f} s"
                loss = "…" if job.loss is None else f"{job.loss:.3f}"
                st.progress(
                    job.fraction,
                    text=f"step {job.step}/{job.total_steps} · loss {loss} · "
                    f"{job.tokens_per_s:,.0f} tokens/s · ETA {eta}",
                )
            if job.error:
                st.error(job.error)
            if job.history:
                st.altair_chart(appkit.history_chart(job.history, job.model_config.n_layers), width="stretch")
            if job.active:
                st.button("Cancel", key=f"train_cancel_{job.id}", on_click=job.cancel)
    if queue.active() != active:  # a run finished: show it everywhere and stop refreshing
        appkit.refresh_checkpoints()
        st.rerun()


st.subheader("Runs")
show_jobs()
