"""Generate: continue a prompt plainly, with routed layer skipping, or by self-speculative decoding."""

import streamlit as st

import appkit
from routed.ledger import KV_POLICIES

st.title("Generate")
left, right = st.columns(2)
with left:
    name = appkit.model_picker("gen_model")
with right:
    threshold = appkit.threshold_slider("gen_threshold", "Threshold (routed: exit when confidence ≥; speculative: draft while ≥)")
if name is None:
    st.stop()

prompt = st.text_input("Prompt", "The", key="gen_prompt")
cols = st.columns(3)
mode = cols[0].selectbox("Mode", appkit.GENERATE_MODES, key="gen_mode",
                         help="speculative: the early exit drafts and the full model verifies (the plain model's output); "
                         "routed: confident tokens skip the deeper layers")
draft_k = cols[1].selectbox("Drafts per round (speculative)", ["auto", *range(1, 9)], key="gen_draft_k")
kv_policy = cols[2].selectbox("KV policy (routed)", KV_POLICIES, key="gen_kv_policy")
cols = st.columns(3)
max_new = cols[0].number_input("New tokens", 1, 256, 48, key="gen_tokens")
temperature = cols[1].number_input("Temperature (0 = greedy)", 0.0, 2.0, 0.0, 0.1, key="gen_temperature")
top_k = cols[2].number_input("Top-k (0 = all)", 0, 1000, 0, key="gen_top_k")
if not st.button("Generate", key="gen_run"):
    st.stop()
if not prompt.strip():
    st.error("Enter a prompt to generate from.")
    st.stop()

from routed.tokenizer import encode  # noqa: E402

ckpt = appkit.checkpoint(name)
early = appkit.exits_of(ckpt)[0]
ids = encode(ckpt.tokenizer, prompt).tolist()
if len(ids) > ckpt.model_config.context_length:
    st.caption(f"The prompt is {len(ids):,} tokens: generation sees its last {ckpt.model_config.context_length}.")
box, shown = st.empty(), []


def draw(tokens) -> str:
    return appkit.speculative_html(tokens, early) if mode == "speculative" else appkit.generated_html(tokens, early)


def stream(token) -> None:
    shown.append(token)
    box.html(draw(shown))


runs, errors = appkit.generate_modes(ckpt, ids, int(max_new), threshold, mode, None if draft_k == "auto" else draft_k,
                                     kv_policy, temperature, top_k, on_token=stream)
if mode in errors:
    st.error(errors[mode])
    st.stop()
box.html(draw(runs[mode].tokens))
st.dataframe(appkit.speed_table(runs), width="stretch")
for other, why in errors.items():
    st.caption(f"{other}: not available ({why})")
st.caption("Each mode ran once on this prompt, one after the other; tokens/s counts generated tokens only. "
           "Greedy speculative output is the plain model's, token for token.")
