"""The workbench dashboard: `streamlit run app.py` or `workbench app`.

Navigation lives here and nowhere else; each page is one function in `dashboard/`. Pages only
arrange widgets around `workbench` calls: runs are separate processes (`workbench.launch`) and every
page reads their state back from the run directory, so closing or reloading the tab never stops one.
"""

import streamlit as st

from dashboard import attention, chat, data, deploy, evaluate, runs, train, widgets
from dashboard import search

st.set_page_config(page_title="Workbench", page_icon=":material/model_training:", layout="wide")

PAGES = [
    st.Page(data.page, title="Data", icon=":material/table_view:", url_path="data", default=True),
    st.Page(train.page, title="Train", icon=":material/play_circle:", url_path="train"),
    st.Page(runs.page, title="Runs", icon=":material/list_alt:", url_path="runs"),
    st.Page(search.page, title="Search", icon=":material/tune:", url_path="search"),
    st.Page(evaluate.page, title="Evaluate", icon=":material/fact_check:", url_path="evaluate"),
    st.Page(chat.page, title="Chat", icon=":material/chat:", url_path="chat"),
    st.Page(attention.page, title="Attention", icon=":material/visibility:", url_path="attention"),
    st.Page(deploy.page, title="Deploy", icon=":material/rocket_launch:", url_path="deploy"),
]

nav = st.navigation(PAGES)
widgets.runs_folder_picker()  # on every page: which runs folder the pages read, and a box to switch it
nav.run()
