"""Deploy page: a finished run exported, quantised or pruned (each a new folder, measured against the run), the
folders compared, and `workbench serve` started and stopped as its own process, with its key, a curl example and
what it has been predicting next to the run's test split. Built on `workbench.deploy`; the operations take seconds
to a minute on a CPU and run here, in the page (they are not trainings); a server is a separate process that
outlives the tab (`deploy.servers`), found again from its record after a reload."""

from __future__ import annotations

import secrets
from pathlib import Path

import streamlit as st

from workbench.deploy import catalog, export_run, prune, quantize
from workbench.deploy import servers as S
from workbench.deploy.compress import METHODS, PRUNE_KINDS, comparison_line, measure
from workbench.deploy.folder import require_finished
from workbench.deploy.served import ENDPOINTS
from workbench.errors import WorkbenchError
from workbench.figures import deploy as F
from workbench.rundir import RunDir, list_runs

from . import widgets

REFRESH_SECONDS = 2.0


def page() -> None:
    st.title("Deploy")
    folder = widgets.runs_folder()
    runs = list_runs(folder)
    offered, refused = [], {}
    for r in runs:
        try:
            require_finished(r, "deploy")
            offered.append(r)
        except WorkbenchError as e:
            refused[r.name] = str(e)
    if not offered:
        st.info(f"No completed runs in `{folder}` to deploy" + (f" ({len(refused)} not finished: below)" if refused
                else "") + ". Train one on the Train page (or `workbench train`), or choose another runs folder in "
                "the sidebar; its export, quantised and pruned copies and its server are made here.")
    if refused:
        with st.expander(f"{len(refused)} run(s) cannot be deployed yet", expanded=not offered):
            for name, why in refused.items():
                st.markdown(f"- **{name}**: {why}")
    if not offered:
        _servers(folder, None)
        return
    run = widgets.pick_run("Run", offered, key="dep_run", help="Completed runs of this runs folder. Export, "
                           "quantise and prune write new folders inside the run (`export/`, `compressed/`).")
    problem = catalog.deploy_problem(run)
    if problem:
        st.warning(f"{problem} It can still be served as a run (below).", icon=":material/warning:")
    _operations(run, disabled=problem is not None)
    _compare(run)
    _servers(folder, run)


def _operations(run: RunDir, disabled: bool) -> None:
    st.subheader("Export and compress")
    st.caption("Each writes a new folder in the run (replacing it needs the box below), re-scores it on the run's "
               "test split and measures it on this CPU: seconds to a minute.")
    overwrite = st.checkbox("Replace a folder that already exists", key="dep_overwrite", disabled=disabled)
    a, b, c = st.columns(3)
    with a.container(border=True):
        st.markdown("**Export** — a folder plain `transformers` loads (adapters merged, safetensors, model card)")
        onnx = st.checkbox("also ONNX (`export/onnx/`)", key="dep_onnx", disabled=disabled)
        if st.button("Export", key="dep_export", icon=":material/ios_share:", disabled=disabled):
            with _working(f"Exporting {run.name}..."):
                res = export_run(run.path, onnx=onnx, overwrite=overwrite)
                st.success(f"Wrote `{res.path}`: {len(res.files)} files, weights {res.size_mb:.2f} MB.",
                           icon=":material/check_circle:")
                st.caption(", ".join(f"`{f}` ({res.sizes[f] / 1e6:.2f} MB)" if res.sizes[f] > 1e5 else f"`{f}`"
                                     for f in res.files))
                for note in res.notes:
                    st.caption(note)
    with b.container(border=True):
        st.markdown("**Quantise** — int8 or bfloat16 weights: smaller, often faster on a CPU")
        method = st.selectbox("Method", METHODS, key="dep_method", disabled=disabled,
                              help="int8-dynamic: torch int8 linear layers; bf16: half-size weights; onnx-int8: "
                                   "ONNX Runtime's int8 (needs the [deploy] extra).")
        if st.button("Quantise", key="dep_quantize", icon=":material/compress:", disabled=disabled):
            with _working(f"Quantising {run.name} ({method}) and measuring it..."):
                _measured(quantize(run.path, method=method, overwrite=overwrite))
    with c.container(border=True):
        st.markdown("**Prune** — zero the smallest weights, or whole attention heads")
        sparsity = st.slider("Sparsity", 0.1, 0.9, 0.3, 0.1, key="dep_sparsity", disabled=disabled,
                             help="The share of the layers' weights (or of the heads) set to zero.")
        kind = st.radio("Kind", PRUNE_KINDS, key="dep_prune_kind", horizontal=True, disabled=disabled,
                        help="magnitude: smallest |w| of each linear layer; heads: attention heads of least weight "
                             "(BERT-family encoders).")
        if st.button("Prune", key="dep_prune", icon=":material/content_cut:", disabled=disabled):
            with _working(f"Pruning {run.name} ({kind}, {sparsity:.0%}) and measuring it..."):
                _measured(prune(run.path, sparsity=sparsity, kind=kind, overwrite=overwrite))


class _working:
    """A spinner around one operation; its refusal (or any failure) shown as `st.error`, never a traceback."""

    def __init__(self, text: str):
        self.spinner = st.spinner(text)

    def __enter__(self) -> None:
        self.spinner.__enter__()

    def __exit__(self, kind, err, tb) -> bool:
        self.spinner.__exit__(None, None, None)
        if err is None:
            return False
        if isinstance(err, WorkbenchError):
            st.error(str(err), icon=":material/error:")
        elif isinstance(err, Exception):
            st.error(f"the operation failed: {type(err).__name__}: {err}", icon=":material/error:")
        else:
            return False  # Streamlit's own control flow (rerun, stop)
        return True


def _measured(m) -> None:
    st.success(f"Wrote `{m.folder}`: {comparison_line(m, None)}.", icon=":material/check_circle:")
    for note in m.notes + list(m.compression.get("notes") or []):
        st.caption(note)


def _compare(run: RunDir) -> None:
    st.subheader("Compare")
    table = catalog.comparison_table(run)
    if len(table) <= 1:
        st.info("No export or compressed copy of this run yet: use the buttons above.")
        return
    st.caption("Size on disk, p50 latency for one text, throughput for a batch of 32 and the test score, measured "
               "on this CPU; `score_change` is against the run's own test score, `agreement` the share of test "
               "examples answered as the run did. Pruned weights are zeros in dense files: neither smaller nor faster.")
    num = st.column_config.NumberColumn
    st.dataframe(table.drop(columns=["path"]), hide_index=True, key="dep_table", column_config={
        "size_mb": num("size MB", format="%.2f"), "latency_ms_p50": num("p50 ms", format="%.2f"),
        "throughput": num("texts/s", format="%.1f"), "score": num(format="%.4f"),
        "score_change": num("vs run", format="%+.4f"), "agreement": num(format="%.3f")})
    folders = table[table["kind"] != "run (fp32)"]
    todo = folders[~folders["measured"]]["folder"].tolist()
    a, b = st.columns([3, 1], vertical_alignment="bottom")
    chosen = a.selectbox("Folder to measure", todo + [f for f in folders["folder"] if f not in todo],
                         key="dep_measure_folder", help="Unmeasured folders first. Measuring writes its "
                         "compression.json (an export is measured once to time the fp32 model).")
    if b.button("Measure", key="dep_measure", icon=":material/speed:") and chosen:
        with _working(f"Measuring {chosen}..."):
            measure(run.path / chosen)
            st.rerun()
    axis = st.radio("Chart", ["size_mb", "latency_ms_p50", "throughput"], key="dep_axis", horizontal=True,
                    format_func=lambda k: F.AXES[k].split(" (")[0] + " vs score")
    st.plotly_chart(F.compression_figure(table, x=axis), key="dep_fig")


def _servers(folder: Path, run: RunDir | None) -> None:
    st.subheader("Serve")
    recs = S.list_servers(folder)
    starting = any(S.server_alive(r) and S.readiness(r)[0] == "starting" for r in recs)
    st.fragment(_server_list, run_every=REFRESH_SECONDS if starting else None)(str(folder))
    if run is not None:
        _start_form(folder, run)
    live = [r for r in S.list_servers(folder) if S.server_alive(r)]
    if live:
        _monitor(live)


def _server_list(folder: str) -> None:
    for rec in S.list_servers(folder):
        with st.container(border=True):
            state, detail = S.readiness(rec) if S.server_alive(rec) else ("down", "")
            head, stop = st.columns([5, 1], vertical_alignment="center")
            if state == "ready":
                head.success(f"**{rec.name}** running on {rec.url} — ready ({detail}); POST `{rec.endpoint}`, docs at "
                             f"[{rec.url}/docs]({rec.url}/docs)", icon=":material/dns:")
            elif state == "starting":
                head.info(f"**{rec.name}** starting on {rec.url} (pid {rec.pid}): loading the model...",
                          icon=":material/hourglass_empty:")
            else:
                head.error(f"**{rec.name}** on port {rec.port} is not running (it exited). Its log:",
                           icon=":material/error:")
                st.code(S.log_tail(rec, folder) or "(empty)", language=None)
            if stop.button("Stop" if state != "down" else "Forget", key=f"dep_stop_{rec.port}",
                           icon=":material/stop_circle:", help="SIGTERM: requests in flight finish, then it exits."):
                S.stop_server(rec, folder)
                st.rerun()
            if state == "down":
                continue
            key = S.server_key(rec)
            st.caption(f"Serving `{rec.source}` · micro-batching {'on' if rec.batching else 'off'} · started "
                       f"{rec.started} · log `{S.log_file(folder, rec.port)}`" + (" · reachable from other machines" if
                                                             S.exposed(rec.host) else ""))
            if key:
                show = st.toggle("Show the API key", key=f"dep_reveal_{rec.port}")
                st.code(key if show else "•" * 16, language=None)
            st.code(S.curl_example(rec), language="bash")
            st.caption("Set the key in your shell first: `export WORKBENCH_API_KEY=...` (the key above).")


def _new_key() -> None:
    st.session_state["dep_key"] = secrets.token_urlsafe(32)


def _start_form(folder: Path, run: RunDir) -> None:
    task = run.summary().get("task")
    if task not in ENDPOINTS:
        st.info(f"{run.name} is a {task} run; `workbench serve` serves {', '.join(ENDPOINTS)} models.")
        return
    sources = {"(the run itself)": run.path} | {str(p.relative_to(run.path)): p for p in catalog.deploy_folders(run)}
    with st.expander(f"Start a server for {run.name}", expanded=not S.list_servers(folder)):
        source = st.selectbox("Serve", list(sources), key="dep_source",
                              help="The run, or one of its export / compressed folders.")
        a, b, c = st.columns(3)
        host = a.text_input("Host", "127.0.0.1", key="dep_host",
                            help="127.0.0.1: this machine only. 0.0.0.0: every network (anyone who can reach this "
                                 "machine can call it with the key).").strip()
        port = b.number_input("Port", 0, 65535, 0, key="dep_port", help="0: a free port.")
        batching = c.toggle("Micro-batching", True, key="dep_batching",
                            help="Requests arriving together share one forward pass (up to 16 texts).")
        if "dep_key" not in st.session_state:
            _new_key()
        k, n = st.columns([5, 1], vertical_alignment="bottom")
        k.text_input("API key", key="dep_key", type="password",
                     help="Generated for you; every request but /healthz and /readyz needs it. It reaches the server "
                          "in an environment variable, never on its command line. The eye shows it.")
        n.button("New key", key="dep_new_key", on_click=_new_key, icon=":material/key:")
        if st.button("Start the server", key="dep_start", type="primary", icon=":material/play_circle:"):
            with _working("Starting..."):
                rec = S.start_server(sources[source], folder, api_key=st.session_state["dep_key"], host=host or
                                     "127.0.0.1", port=int(port) or None, batching=batching,
                                     name=run.name if source.startswith("(") else f"{run.name}/{source}")
                st.toast(f"Started on {rec.url}")
                st.rerun()


def _monitor(live: list[S.ServerRecord]) -> None:
    st.subheader("Monitor")
    by = {f"{r.name} ({r.url})": r for r in live}
    rec = by[st.selectbox("Server", list(by), key="dep_monitor_server")] if len(by) > 1 else live[0]
    key = S.server_key(rec)
    st.button("Refresh", key="dep_monitor_refresh", icon=":material/refresh:")
    status, rep = S.request(rec, "/v1/monitor", key)
    if status != 200:
        st.info(f"{rec.name}: the monitor is not available yet ({rep.get('detail', status)}).")
        return
    drift = rep.get("drift") or {}
    flag, reason = drift.get("flag"), drift.get("reason", "")
    if flag is None:
        st.info(f"No drift flag yet: {reason}", icon=":material/hourglass_empty:")
    elif flag:
        st.error(f"Drift: {reason}", icon=":material/warning:")
    else:
        st.success(f"No drift: {reason}", icon=":material/check_circle:")
    a, b = st.columns(2)
    a.plotly_chart(F.monitor_labels_figure(rep), key="dep_monitor_fig")
    b.caption("Mean confidence and input length in characters (10th, 50th, 90th percentiles): the server's last "
              "predictions against the run's test split.")
    b.dataframe(F.monitor_summary(rep), key="dep_monitor_summary")
    stats = F.drift_table(rep)
    if len(stats):
        b.caption("Drift statistics: label shares' total variation distance, and the population stability index of "
                  "confidence and of length; over its threshold, a statistic flags drift.")
        b.dataframe(stats, hide_index=True, key="dep_drift")
    text = st.text_input("Try it", key="dep_try_text", placeholder="a text to send to the server")
    if st.button("Send", key="dep_try", icon=":material/send:", disabled=not text.strip()):
        body = {"prompt": text, "stream": False} if rec.endpoint == "/v1/generate" else {"texts": [text]}
        code, answer = S.request(rec, rec.endpoint, key, body, timeout=60)
        (st.json if code == 200 else st.error)(answer if code == 200 else f"{code}: {answer.get('detail', answer)}")
