"""Instruction and dialogue fine-tuning's page sections (`causal-lm-sft`): the Data page's conversation preview
(chat turns, not a table) with the conversation report, the Train page's data choice with the format it
recognised and the prompt/answer column mapping, and the Evaluate page's generation scores and the base and
tuned models' answers to the same prompts side by side."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from workbench.config import DataConfig, field_help
from workbench.errors import WorkbenchError
from workbench.estimate import local_model_dir

from .. import widgets

TASK = "causal-lm-sft"
DEFAULT_MODEL = "smollm2-135m"  # the built-in chat model: its tokenizer measures prompt and answer lengths
FORMATS = {"messages": "`messages` lists of {role, content} turns (the chat-template / TRL format)",
           "alpaca": "Alpaca records (`instruction`, optional `input`, `output`)",
           "prompt/completion": "prompt and answer columns"}
TABLES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
PREVIEW = 3  # conversations drawn as chat turns on the Data page
SCORE = st.column_config.NumberColumn(format="%.3f")
_KEYS = re.compile(r'"(messages|instruction|output|prompt|completion|response)"\s*:')


# --- which files are conversations -----------------------------------------------------------------
def claims(source: str) -> bool:
    """A file whose records or columns say conversations: `messages`, Alpaca `instruction` + `output`, or
    TRL's `prompt` + `completion`/`response`. Reads only the file's start (a Parquet file's schema) and never
    raises: it picks the Data page's view; the reader then reports what is wrong with the rows."""
    return _is_conversations(_head_columns(Path(source)))


def _is_conversations(cols: set[str]) -> bool:
    return "messages" in cols or {"instruction", "output"} <= cols or \
        ("prompt" in cols and bool({"completion", "response"} & cols))


def _head_columns(p: Path, head_bytes: int = 65536) -> set[str]:
    ext = p.suffix.lower()
    if ext not in TABLES or not p.is_file():
        return set()
    try:
        if ext == ".parquet":
            import pyarrow.parquet as pq

            return {str(n).lower() for n in pq.read_schema(p).names}
        with p.open("rb") as f:
            head = f.read(head_bytes).decode("utf-8-sig", errors="replace")
    except Exception:  # noqa: BLE001 - any unreadable file is simply not claimed
        return set()
    if ext in (".csv", ".tsv"):
        first = head.splitlines()[0] if head.strip() else ""
        return {c.strip().strip('"').lower() for c in re.split(r"[,\t;]", first)}
    return {k.lower() for k in _KEYS.findall(head[:4096])}  # keys of the first record(s)


# --- reading -------------------------------------------------------------------------------------
@st.cache_data(max_entries=8, show_spinner="Reading the conversations...")
def _conversations(source: str, stamp: float, prompt: str | None, answer: str | None) -> dict[str, Any]:
    """The format recognised, the columns it used, the table's columns and the first conversations."""
    from workbench.data import read_table
    from workbench.tasks.causal_lm_sft import load_conversations

    conv = load_conversations(source, DataConfig(source=source, text_column=prompt, label_column=answer))
    columns = [] if not Path(source).is_file() else [str(c) for c in read_table(source).df.columns]
    head = conv.frame.head(50)
    return {"format": conv.format, "used": dict(conv.columns), "columns": columns, "rows": len(conv.frame),
            "problems": list(conv.problems),
            "index": [str(i) for i in head.index], "messages": [list(m) for m in head["messages"]]}


def _tokenizer_dir() -> tuple[str | None, str]:
    model = st.session_state.get("train_model") or DEFAULT_MODEL
    found = local_model_dir(model)
    return (str(found) if found else None), model


def _mapping(info: dict[str, Any], key: str, choice: dict[str, Any]) -> tuple[str | None, str | None]:
    """Prompt and answer column pickers for a prompt/completion table (guessed names first)."""
    cols = info["columns"]
    if info["format"] != "prompt/completion" or not cols:
        return None, None
    used = info["used"]

    def index(value: Any, fallback: int) -> int:
        return cols.index(value) if value in cols else min(fallback, len(cols) - 1)

    a, b = st.columns(2)
    prompt = a.selectbox("Prompt column", cols, key=f"{key}_prompt_{info['source']}",
                         index=index(choice.get("text_column") or used.get("prompt"), 0),
                         help="What the user says: the model reads it and learns nothing from it (labels -100).")
    answer = b.selectbox("Answer column", cols, key=f"{key}_answer_{info['source']}",
                         index=index(choice.get("label_column") or used.get("completion"), 1),
                         help="The assistant's answer: the only tokens the loss is computed on.")
    return prompt, answer


def _read(source: str, key: str, choice: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """Read the conversations (with the column mapping when the file is a prompt/completion table)."""
    stamp = widgets.file_stamp(source)
    prompt = choice.get("text_column") if choice.get("source") == source else None
    answer = choice.get("label_column") if choice.get("source") == source else None
    try:
        info = _conversations(source, stamp, prompt, answer) | {"source": source}
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return None, None, None
    st.caption(f"Recognised format: {FORMATS.get(info['format'], info['format'])}.")
    if info["format"] == "prompt/completion" and not info["used"] and info["columns"]:
        for p in info["problems"]:  # no column with a known name: say so, then offer the mapping
            st.warning(f"{p} Pick the prompt and answer columns below.", icon=":material/warning:")
    prompt, answer = _mapping(info, key, choice if choice.get("source") == source else {})
    if prompt is not None and (prompt, answer) != (info["used"].get("prompt"), info["used"].get("completion")):
        try:
            info = _conversations(source, stamp, prompt, answer) | {"source": source}
        except WorkbenchError as e:
            st.error(str(e), icon=":material/error:")
            return None, prompt, answer
    return info, prompt, answer


# --- Data page -------------------------------------------------------------------------------------
def data_view(source: str) -> None:
    """A few conversations drawn as chat turns, then the report: turns, prompt and answer token lengths
    (with the chosen model's tokenizer and chat template), truncation, empty or one-sided conversations."""
    st.subheader(f"Preview: {Path(source).name}")
    choice = st.session_state.get("data_choice") or {}
    info, prompt, answer = _read(source, "data", choice)
    if info is None:
        return
    if info["messages"]:
        n = min(PREVIEW, len(info["messages"]))
        st.caption(f"{info['rows']:,} conversations; the first {n} as the model will see them (turns in order; "
                   f"`{'line' if source.lower().endswith('.jsonl') else 'row'}` is where each is in the file).")
        for row, msgs in list(zip(info["index"], info["messages"]))[:n]:
            with st.container(border=True):
                st.caption(f"row {row}")
                chat_turns(msgs)
    tok_dir, model = _tokenizer_dir()
    report, _ = widgets.data_report(source, widgets.file_stamp(source), (prompt, answer, None),
                                    int(st.session_state.get("t.data.max_length", 256)), tok_dir, TASK)
    _show_report(report, tok_dir is not None, model)
    if not report["problems"]:
        st.session_state["data_choice"] = {"source": source, "task": TASK, "text_column": prompt,
                                           "label_column": answer, "text_pair_column": None}
        st.success(f"Ready: {report['rows_used']:,} conversations ({FORMATS.get(info['format'], info['format'])}). "
                   f"The Train page (task {TASK}) uses this data.", icon=":material/check_circle:")


def chat_turns(messages: list[dict[str, Any]]) -> None:
    """Each turn as a chat bubble (text shown as text: never rendered as HTML)."""
    for m in messages:
        role = str(m.get("role", "")) if isinstance(m, dict) else ""
        content = str(m.get("content", "")) if isinstance(m, dict) else str(m)
        with st.chat_message(role if role in ("user", "assistant") else "ai" if role == "system" else "user",
                             avatar=":material/settings:" if role == "system" else None):
            if role not in ("user", "assistant"):
                st.caption(role or "?")
            st.text(content)


def _show_report(r: dict[str, Any], tokenized: bool, model: str) -> None:
    st.subheader("Data report")
    for p in r["problems"]:
        st.error(p, icon=":material/block:")
    for w in r["warnings"]:  # truncated conversations (named by row), no chat template, leakage
        st.warning(w, icon=":material/warning:")
    d = r.get("details") or {}
    turns, prompts, answers = (d.get(k) or {} for k in ("turns", "prompt_tokens", "answer_tokens"))
    m = st.columns(5)
    m[0].metric("Conversations read", f"{r['rows_read']:,}")
    m[1].metric("Conversations used", f"{r['rows_used']:,}")
    m[2].metric("Turns (mean)", turns.get("mean", "-"), help="User and assistant turns per training conversation "
                "(a system message not counted).")
    m[3].metric("Multi-turn", d.get("multi_turn", "-"), help="Conversations with more than one exchange: the loss "
                "covers every assistant turn in them.")
    m[4].metric("Truncated", d.get("truncated", "-") if tokenized else "-",
                help="Conversations longer than data.max_length: their oldest tokens are dropped, the last answer "
                     "is kept whole.")
    if tokenized and prompts:
        st.caption(f"Tokens with {model}'s tokenizer ({d.get('template', '?')} chat template, end of turn "
                   f"`{d.get('end_of_turn', '?')}`): prompt median {prompts.get('p50')}, p95 {prompts.get('p95')}, "
                   f"max {prompts.get('max')}; answer median {answers.get('p50')}, p95 {answers.get('p95')}, max "
                   f"{answers.get('max')}. Only answer tokens carry labels; prompt and system tokens are -100.")
    if d.get("with_system"):
        st.caption(f"{d['with_system']} conversation(s) start with a system message.")
    if d.get("packing"):
        from workbench.data.report import packing_line

        st.caption(packing_line(d["packing"]).capitalize() + ": training rows hold several conversations, none "
                   "attending to another.")
    if r["split_sizes"]:
        st.caption("Splits: " + ", ".join(f"{k} {v:,}" for k, v in r["split_sizes"].items())
                   + f"; duplicates in train {r.get('duplicates', 0)}, test conversations also in train "
                   f"{(r.get('leakage') or {}).get('test', 0)}.")
    if r["problems"]:
        return
    widgets.token_length_panel(st.container(), r, tokenized, model)


# --- Train page ------------------------------------------------------------------------------------
def train_defaults(model: str) -> dict[str, Any]:
    """Settings the Train page switches to when this task (or another model for it) is chosen: LoRA (a
    135M-parameter decoder learns an answer style with ~0.3% of its weights trained; full fine-tuning stays
    one click away)."""
    return {"peft.method": "lora"}


def _sources(task: str) -> list[str]:
    """Conversation files first, then other uploaded tables (prompt/answer columns to map), then built-ins."""
    from workbench.assets import BUILTIN_DATASETS
    from workbench.storage import list_uploads

    from . import DEFAULT, task_for_source

    files = [str(p) for p in list_uploads() if p.suffix.lower() in TABLES]
    kinds = {f: task_for_source(f) for f in files}
    return ([f for f in files if kinds[f] == task] + [f for f in files if kinds[f] == DEFAULT]
            + [name for name, b in BUILTIN_DATASETS.items() if b.task == task])


def train_data(task: str) -> dict[str, Any]:
    """Pick conversations (an upload or a built-in); say which format was recognised and map the prompt and
    answer columns of a table."""
    from workbench.assets import BUILTIN_DATASETS

    st.subheader("Data")
    choice = st.session_state.get("data_choice") or {}
    if choice.get("task") != task:
        choice = {}
    options = _sources(task)
    if choice.get("source") and choice["source"] not in options:
        options.insert(0, choice["source"])
    if not options:
        st.info("No conversations yet: upload a JSONL file with `messages`, Alpaca records or a prompt/answer "
                "table on the Data page.", icon=":material/upload_file:")
        return {"data.source": ""}
    if st.session_state.get("train_source") not in options:
        st.session_state["train_source"] = choice.get("source") or options[0]
    source = st.selectbox("Data set", options, key="train_source", format_func=lambda s: Path(s).name,
                          help=field_help()["data.source"] + " Conversations: " + "; ".join(FORMATS.values()) + ".")
    prompt = answer = None
    if source in BUILTIN_DATASETS:
        st.caption(BUILTIN_DATASETS[source].description)
    else:
        _, prompt, answer = _read(source, "train", choice)
    packing = st.checkbox("pack conversations into full rows", key="t.data.packing",
                          help=field_help()["data.packing"], persist_state="session")
    return {"data.source": source, "data.text_column": prompt, "data.label_column": answer,
            "data.text_pair_column": None, "data.packing": bool(packing)}


# --- Evaluate page ---------------------------------------------------------------------------------
TILES = (("loss", "Held-out loss", False), ("perplexity", "Perplexity", False), ("chrf", "chrF", True),
         ("bleu", "BLEU", True))


def evaluate(run: Any, runs: list[Any], ev: dict[str, Any]) -> None:
    """Loss, perplexity, chrF and BLEU before -> after; the base and tuned answers to the same prompts side
    by side (worst tuned answer first), slices, and one example as a chat."""
    after, before = ev.get("after") or {}, ev.get("before") or {}
    main = after or before
    for col, (key, name, higher) in zip(st.columns(4), TILES):
        value, old = main.get(key), before.get(key)
        delta = value - old if after and isinstance(value, (int, float)) and isinstance(old, (int, float)) else None
        col.metric(name, f"{value:.3f}" if isinstance(value, (int, float)) else "-",
                   delta=f"{delta:+.3f} vs base" if delta is not None else None,
                   delta_color="normal" if higher else "inverse",
                   help=None if higher else "Lower is better: the mean cross-entropy per answer token (perplexity "
                                            "is its exponential).")
    em = f"exact match {before.get('exact_match', 0):.0%} → {after.get('exact_match', 0):.0%}" if after and before \
        else ""
    st.caption(f"Test split: {main.get('n')} conversations, {main.get('answer_tokens', '?')} answer tokens. Loss is "
               f"teacher-forced on the reference answers; chrF and BLEU (sacreBLEU, tokenizer "
               f"{main.get('bleu_tokenize', '?')}) score the greedy answers each model wrote. 'Base' is the model "
               f"before fine-tuning. {em}")
    frames = {}
    for which in ("before", "after"):
        try:
            frames[which] = run.predictions(which)
        except Exception:  # noqa: BLE001 - no such file yet, or a torn one while the run writes it
            frames[which] = None
    table = answers_side_by_side(frames["before"], frames["after"])
    if not len(table):
        st.info("No per-example answers in this run yet.")
        return
    tabs = st.tabs(["Answers side by side", "Slices", "One example"])
    with tabs[0]:
        st.caption("The same test prompts answered by the base and the fine-tuned model; lowest chrF of the tuned "
                   "answer first (then highest loss). chrF is per answer, 0-100.")
        st.dataframe(table, hide_index=True, key="sft_answers",
                     column_config={c: SCORE for c in ("chrF base", "chrF tuned", "loss base", "loss tuned")})
    with tabs[1]:
        from workbench.tasks.causal_lm_sft import answer_slices

        with widgets.shown_errors():
            pred = frames["after"] if frames["after"] is not None else frames["before"]
            st.dataframe(answer_slices(pred), hide_index=True, key="sft_slices",
                         column_config={c: SCORE for c in ("loss", "chrf", "exact_match")})
    with tabs[2]:
        _example(table, frames["after"] if frames["after"] is not None else frames["before"])


def answers_side_by_side(before: pd.DataFrame | None, after: pd.DataFrame | None) -> pd.DataFrame:
    """row, prompt, reference, base answer, tuned answer, their chrF and loss; worst tuned answer first."""
    main = after if after is not None else before
    if main is None or not {"row", "text", "gold", "predicted"} <= set(main):
        return pd.DataFrame()
    tag = "tuned" if after is not None else "base"
    out = pd.DataFrame({"row": main["row"], "prompt": main["text"], "reference": main["gold"],
                        f"{tag} answer": main["predicted"], f"chrF {tag}": main.get("chrf"),
                        f"loss {tag}": main.get("loss")})
    if after is not None and before is not None and {"row", "predicted"} <= set(before):
        base = pd.DataFrame({"row": before["row"], "base answer": before["predicted"],
                             "chrF base": before.get("chrf"), "loss base": before.get("loss")})
        out = out.merge(base, on="row", how="left")
    order = ["row", "prompt", "reference", "base answer", "tuned answer", "chrF base", "chrF tuned", "loss base",
             "loss tuned"]
    out = out[[c for c in order if c in out]]
    keys = [c for c in (f"chrF {tag}", f"loss {tag}") if c in out and out[c].notna().any()]
    return out.sort_values(keys, ascending=[k.startswith("chrF") for k in keys]) if keys else out


def _example(table: pd.DataFrame, pred: pd.DataFrame) -> None:
    rows = list(table["row"])
    row = st.selectbox("Example (row in the file, worst first)", rows, key="sft_example",
                       format_func=lambda r: f"row {r} · {str(table.set_index('row').loc[r, 'prompt'])[:70]}")
    r = table.set_index("row").loc[row]
    msgs = pred.set_index("row").loc[row].get("messages") if "messages" in pred else None
    if isinstance(msgs, list) and msgs:
        from workbench.tasks.causal_lm_sft.formats import split_last_turn

        try:
            chat_turns(split_last_turn(msgs)[0])
        except (ValueError, KeyError, TypeError):  # a foreign or damaged predictions row: the table still shows it
            pass
    cols = st.columns(3)
    for col, (name, key) in zip(cols, (("Reference", "reference"), ("Base model", "base answer"),
                                       ("Fine-tuned", "tuned answer"))):
        if key in r:
            col.markdown(f"**{name}**")
            col.text(str(r[key]))
