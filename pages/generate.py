"""Generate: text from a model, token by token, with routed execution that really skips the deep layers."""

import streamlit as st

import appkit

st.title("Generate")
left, right = st.columns(2)
with left:
    name = appkit.model_picker("gen_model")
with right:
    threshold = appkit.threshold_slider("gen_threshold")
if name is None:
    st.stop()

prompt = st.text_input("Prompt", "The", key="gen_prompt")
cols = st.columns(4)
max_new = cols[0].number_input("New tokens", 1, 256, 48, key="gen_tokens")
mode = cols[1].selectbox("Mode", ["sparse", "dense"], key="gen_mode", help="sparse skips layers for exited tokens")
temperature = cols[2].number_input("Temperature (0 = greedy)", 0.0, 2.0, 0.0, 0.1, key="gen_temperature")
top_k = cols[3].number_input("Top-k (0 = all)", 0, 1000, 0, key="gen_top_k")
clicked = st.button("Generate", key="gen_run")
if clicked and not prompt.strip():
    st.error("Enter a prompt to generate from.")
if clicked and prompt.strip():
    from routed.generate import generate
    from routed.tokenizer import decode, encode

    ckpt = appkit.checkpoint(name)
    ids = encode(ckpt.tokenizer, prompt).tolist()
    box = st.empty()
    shown = []

    def stream(token):
        shown.append(token)
        box.html(appkit.generated_html(shown, 1))

    options = dict(temperature=temperature, top_k=top_k or None, decode=lambda i: decode(ckpt.tokenizer, i))
    try:
        routed = generate(ckpt.model, ids, int(max_new), threshold, mode, on_token=stream, **options)
        plain = generate(ckpt.model, ids, int(max_new), None, "plain", **options)
    except ValueError as exc:
        st.error(str(exc))
    else:
        share = sum(t.exit_layer == 1 for t in routed.tokens) / max(1, len(routed.tokens))
        cols = st.columns(3)
        cols[0].metric(f"Routed ({mode}) tokens/s", f"{routed.tokens_per_s:,.1f}")
        cols[1].metric("Plain model tokens/s", f"{plain.tokens_per_s:,.1f}")
        cols[2].metric("Tokens that exited early", f"{100 * share:.0f}%")
