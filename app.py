"""The routed app: `streamlit run app.py` from the repository root."""

import streamlit as st

st.set_page_config(page_title="routed", page_icon=":material/alt_route:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/token_routing.py", title="Token routing", icon=":material/alt_route:"),
    st.Page("pages/lens.py", title="Lens", icon=":material/layers:"),
    st.Page("pages/calibration.py", title="Calibration", icon=":material/verified:"),
    st.Page("pages/generate.py", title="Generate", icon=":material/edit_note:"),
    st.Page("pages/ppl_vs_compute.py", title="PPL vs compute", icon=":material/show_chart:"),
    st.Page("pages/research.py", title="Research tables", icon=":material/table_chart:"),
]
st.navigation(pages).run()
