"""Continued pre-training's page sections, shared by `masked-lm` and `causal-lm` (they read the same corpora):
the Data page's corpus preview and report (documents, characters and tokens per split, duplicates, overlap,
unknown tokens), the Train page's corpus settings (`data.document_split`; for masked-lm the mask rate, whole-word
masking, next-sentence prediction), and the Evaluate page's held-out perplexity before -> after, the validation
perplexity curve, the documents the model found hardest, loss slices and a playground (fill the mask / continue
the text) with the base model and the run side by side.

The task's own code does the work (`workbench.tasks.pretraining`: reading, report, scores, slices;
`workbench.playground`: loading a model with its language-model head, fill_mask, continue_text); this module
arranges it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from workbench.config import DataConfig, field_help
from workbench.errors import WorkbenchError
from workbench.estimate import local_model_dir

from .. import widgets

TASKS = ("masked-lm", "causal-lm")
data_kind = "corpus"  # BuiltinDataset.task of aclsum_papers and msra_text: offered to both tasks
DEFAULT_MODEL = {"masked-lm": "minilm", "causal-lm": "smollm2-135m"}
TEXT_FILES = (".txt", ".md")
SPLITS = ("auto", "paragraph", "line", "file")
FORMATS = "a .txt or .md file (documents per data.document_split), or JSONL/CSV/Parquet with a text column"
MASK_EXAMPLE = "The model was trained on [MASK] text."
CONTINUE_EXAMPLE = "In this paper, we"
SCORE = st.column_config.NumberColumn(format="%.3f")
PROB = st.column_config.ProgressColumn(format="%.3f", min_value=0.0, max_value=1.0)


# --- which files are corpora -----------------------------------------------------------------------
def claims(source: str) -> bool:
    """A .txt or .md file is a corpus (tagged CoNLL lines in a .txt are token classification's, whose sections are
    registered first and asked first). Tables with a text column stay text classification's on the Data page;
    the Train page still reads them as corpora when picked by path. A .txt that is a table in disguise (a first
    line of delimited column names such as `text,label`) stays text classification's too."""
    p = Path(source)
    if p.suffix.lower() not in TEXT_FILES:
        return False
    return not _looks_like_table(p)


def _looks_like_table(p: Path) -> bool:
    from workbench.data.prepare import LABEL_NAMES, TEXT_NAMES

    try:
        with open(p, "rb") as f:
            first = f.read(4096).decode("utf-8", "replace").lstrip("\ufeff").splitlines()[:1]
    except OSError:
        return False
    if not first:
        return False
    for delim in (",", "\t", ";", "|"):
        fields = [x.strip().strip('"').lower() for x in first[0].split(delim)]
        if len(fields) >= 2 and any(x in TEXT_NAMES or x in LABEL_NAMES for x in fields):
            return True
    return False


def _kind(model: str) -> str | None:
    """"masked-lm" or "causal-lm" for a model on this machine (its config.json), None when unknown."""
    from workbench.assets import BUILTIN_MODELS
    from workbench.estimate import model_summary

    if model in BUILTIN_MODELS:
        return "causal-lm" if BUILTIN_MODELS[model].architecture in ("llama", "gpt2", "qwen2") else "masked-lm"
    from transformers.models.auto import modeling_auto as auto

    mtype = (model_summary(model) if model else {}).get("model_type")
    if not mtype:
        return None
    return "masked-lm" if mtype in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES else "causal-lm"


def tokenizer_model(task: str) -> str:
    """The model whose tokenizer counts the corpus: the Train page's, when it fits the objective, else the
    objective's built-in (MiniLM for masked-lm, SmolLM2 for causal-lm)."""
    chosen = st.session_state.get("train_model") or ""
    return chosen if chosen and _kind(chosen) == task else DEFAULT_MODEL[task]


# --- Data page -------------------------------------------------------------------------------------
@st.cache_data(max_entries=8, show_spinner="Reading the corpus...")
def _documents(source: str, stamp: float, document_split: str, n: int = 200) -> dict[str, Any]:
    """The format, how many documents, and the first `n` documents (text and the corpus's own columns)."""
    from workbench.tasks.pretraining.corpus import doc_texts, read_corpus

    corpus = read_corpus(source, DataConfig(source=source, document_split=document_split))
    head = corpus.frame.head(n)
    texts = list(doc_texts(head, corpus.encoding)) if len(head) else []
    preview = pd.DataFrame({"document": range(len(head)), "text": texts,
                            "characters": head["chars"].to_numpy() if "chars" in head else [len(t) for t in texts]})
    for c in head.columns:
        if c == "file":  # the file's name: a folder's files are told apart by it
            preview[c] = [Path(str(v)).name for v in head[c]]
        elif c not in ("text", "chars", "start", "end", "hash", "split"):
            preview[c] = head[c].to_numpy()
    return {"format": corpus.format, "documents": len(corpus.frame), "preview": preview,
            "problems": list(corpus.problems), "warnings": list(corpus.warnings)}


@st.cache_data(max_entries=16, show_spinner="Checking the corpus...")
def _report(source: str, stamp: float, task: str, max_length: int, document_split: str,
            tokenizer_dir: str | None) -> dict[str, Any]:
    """The task's corpus report as a dict (documents, characters, tokens per split; unknown tokens...)."""
    from workbench.data.report import DataReport
    from workbench.tasks import get_task

    tok = widgets.tokenizer(tokenizer_dir) if tokenizer_dir else None
    cfg = DataConfig(source=source, max_length=max_length, document_split=document_split)
    try:
        return get_task(task).prepare(cfg, 42, tok, raise_on_problems=False).report.to_dict()
    except WorkbenchError as e:  # a source the reader cannot read at all: the message is the report
        return DataReport(source=source, problems=[str(e)]).to_dict()


def _is_text(source: str) -> bool:
    p = Path(source)
    return p.suffix.lower() in TEXT_FILES or p.is_dir()


def _split_picker(source: str, where: Any = st) -> str:
    """`data.document_split`, shared by the Data and Train pages (one session key); only text files have it."""
    st.session_state.setdefault("t.data.document_split", DataConfig().document_split)
    text = _is_text(source)
    value = where.selectbox("Documents are", SPLITS, key="t.data.document_split", disabled=not text,
                            persist_state="session", help=field_help()["data.document_split"],
                            format_func=lambda s: {"auto": "auto (paragraphs in one file)", "paragraph":
                                                   "paragraphs (blank lines between)", "line": "lines",
                                                   "file": "whole files"}[s])
    if not text:
        where.caption("A table or built-in corpus: one document per row.")
    return value if text else DataConfig().document_split


def data_view(source: str) -> None:
    """The objective, the first documents, then the report: documents, characters and tokens per split, the
    share of unknown tokens for the chosen tokenizer, duplicates, overlap, and problems that stop a run."""
    from workbench.assets import BUILTIN_DATASETS

    stamp = widgets.file_stamp(source)
    chosen = (st.session_state.get("data_choice") or {}).get("task")
    if st.session_state.get("pt_objective") not in TASKS:
        st.session_state["pt_objective"] = chosen if chosen in TASKS else \
            (_kind(st.session_state.get("train_model") or "") or "masked-lm")
    a, b = st.columns([3, 2])
    task = a.radio("Objective", TASKS, key="pt_objective", horizontal=True,
                   help="masked-lm: an encoder (BERT, MiniLM) learns to fill hidden tokens; causal-lm: a decoder "
                        "(Llama, SmolLM2) learns to predict each next token. The same corpus serves both.")
    split = _split_picker(source, b)
    try:
        docs = _documents(source, stamp, split)
    except WorkbenchError as e:
        st.error(str(e), icon=":material/error:")
        return
    st.subheader(f"Preview: {Path(source).name}")
    if source in BUILTIN_DATASETS:
        st.caption(BUILTIN_DATASETS[source].description)
    st.caption(f"A corpus ({docs['format']}): {docs['documents']:,} documents, the first {len(docs['preview'])} "
               f"shown. No labels and no column mapping: the model learns from the text itself.")
    st.dataframe(docs["preview"], hide_index=True, height=240, key="pt_preview",
                 column_config={"text": st.column_config.TextColumn(width="large")})
    model = tokenizer_model(task)
    tok_dir = local_model_dir(model)
    max_length = int(st.session_state.get("t.data.max_length") or DataConfig().max_length)
    report = _report(source, stamp, task, max_length, split, str(tok_dir) if tok_dir else None)
    _show_report(report, model, tok_dir is not None)
    if not report["problems"]:
        st.session_state["data_choice"] = {"source": source, "task": task, "text_column": None,
                                           "label_column": None, "text_pair_column": None}
        d = report.get("details") or {}
        st.success(f"Ready: {report['rows_used']:,} documents"
                   + (f", {d['train_blocks']:,} training blocks of {d['block_tokens']} tokens" if d.get("train_blocks")
                      else "") + f". The Train page (task {task}) uses this corpus.", icon=":material/check_circle:")


def split_table(details: dict[str, Any]) -> pd.DataFrame:
    """Documents, characters and tokens per split, from the report's details."""
    docs, chars, toks = (details.get(k) or {} for k in ("documents", "characters", "tokens"))
    splits = [s for s in ("train", "validation", "test") if s in docs]
    out = pd.DataFrame({"documents": [docs.get(s, 0) for s in splits],
                        "characters": [chars.get(s, 0) for s in splits]}, index=pd.Index(splits, name="split"))
    if toks:
        out["tokens"] = [toks.get(s, 0) for s in splits]
    return out


def _show_report(r: dict[str, Any], model: str, tokenized: bool) -> None:
    st.subheader("Data report")
    for p in r["problems"]:  # each says what to do (too short for a block, mostly [UNK], unreadable files...)
        st.error(p, icon=":material/block:")
    for w in r["warnings"]:  # unknown tokens, duplicates, overlap, held-out documents sampled
        st.warning(w, icon=":material/warning:")
    d = r.get("details") or {}
    if not d:
        return
    unk = r.get("unknown_tokens") or {}
    toks = d.get("tokens") or {}
    overlap = sum((r.get("leakage") or {}).values())
    m = st.columns(6)
    m[0].metric("Documents", f"{r['rows_used']:,}")
    m[1].metric("Tokens (train)", (f"{toks['train']:,}" if d.get("tokens_exact") else f"~{toks['train']:,}")
                if "train" in toks else "-", help="Counted with the tokenizer named below" +
                ("" if d.get("tokens_exact", True) else " on a sample of the documents (a large corpus)") + ".")
    m[2].metric("Training blocks", f"{d['train_blocks']:,}" if "train_blocks" in d else "-",
                help=f"Blocks of data.max_length={d.get('block_tokens', '?')} tokens: the rows training sees.")
    m[3].metric("Unknown tokens", f"{unk['share']:.1%}" if unk.get("share") is not None else "-",
                help="Share of the training text's tokens that the tokenizer maps to its unknown token: those "
                     "are lost to the model (MiniLM reads Chinese as mostly [UNK]).")
    m[4].metric("Duplicates (train)", f"{r.get('duplicates', 0):,}")
    m[5].metric("Overlap with train", f"{overlap:,}", help="Validation and test documents whose text is also in "
                "train: their perplexity measures memory, not adaptation.")
    st.caption(f"Tokens counted with {model!r}'s tokenizer (the Train page's model when it fits the objective)."
               if tokenized else f"Token counts need the tokenizer of {model!r}, which is not on this machine yet.")
    st.dataframe(split_table(d), key="pt_splits")
    how = {"paragraph": "one document per paragraph (blank lines between)", "line": "one document per line",
           "file": "one document per file", "auto": "paragraphs for a file, whole files for a folder"}
    st.caption(f"data.document_split={d.get('document_split')}: {how.get(d.get('document_split'), '')}"
               + (f"; {d['files']} file(s)" if d.get("files") else "")
               + (". Read as a stream: memory stays flat however large the file." if d.get("streamed") else "."))


# --- Train page ------------------------------------------------------------------------------------
def train_defaults(model: str) -> dict[str, Any]:
    """One pass over the corpus. A decoder (causal-lm, SmolLM2) with LoRA at 1e-3 (adapters need a larger
    rate); an encoder (masked-lm, MiniLM) trained whole at 1e-4, a rate that moves its small MLM head. The
    model's kind decides (the task chosen, for a model not on this machine yet)."""
    if (_kind(model) or st.session_state.get("train_task")) == "causal-lm":
        return {"peft.method": "lora", "training.learning_rate": 1e-3, "training.num_train_epochs": 1.0}
    return {"peft.method": "full", "training.learning_rate": 1e-4, "training.num_train_epochs": 1.0}


def train_data(task: str) -> dict[str, Any]:
    """Corpora (uploads and the built-ins), how a text file is cut into documents, and masked-lm's masking."""
    from workbench.assets import BUILTIN_DATASETS

    from . import pick_source

    st.subheader("Data")
    source = pick_source(task, f"No corpus yet: upload one on the Data page ({FORMATS}), or pick a built-in corpus "
                               f"there (aclsum_papers: English papers; msra_text: Chinese news).")
    if source is None:
        return {"data.source": ""}
    if source in BUILTIN_DATASETS:
        st.caption(BUILTIN_DATASETS[source].description)
    st.caption("Documents are tokenised, joined with an end-of-text token and cut into blocks of data.max_length "
               "tokens (Hyper-parameters below): blocks cross document borders, no token is dropped. Held-out "
               "documents are scored one by one (perplexity).")
    out: dict[str, Any] = {"data.source": source, "data.text_column": None, "data.label_column": None,
                           "data.text_pair_column": None, "data.document_split": _split_picker(source),
                           # the best checkpoint is the one with the lowest validation perplexity
                           "training.metric_for_best_model": "perplexity"}
    if task != "masked-lm":
        return out
    help_ = field_help()
    st.session_state.setdefault("t.data.mlm_probability", DataConfig().mlm_probability)
    c = st.columns(3)
    rate = c[0].number_input("mask rate (mlm_probability)", min_value=0.01, max_value=0.99, step=0.05,
                             key="t.data.mlm_probability", help=help_["data.mlm_probability"], persist_state="session")
    whole = c[1].checkbox("whole-word masking", key="t.data.whole_word_mask", help=help_["data.whole_word_mask"],
                          persist_state="session")
    nsp = c[2].checkbox("next-sentence prediction", key="t.data.next_sentence_prediction",
                        help=help_["data.next_sentence_prediction"], persist_state="session")
    st.caption(f"{rate:.0%} of the tokens are chosen for prediction: 80% of those become [MASK], 10% a random "
               f"token, 10% stay as they are; the loss counts only them."
               + (" Whole words are masked together." if whole else "")
               + (" NSP needs a model with BERT's pre-training heads (not MiniLM's sentence encoder)." if nsp else ""))
    return {**out, "data.mlm_probability": float(rate), "data.whole_word_mask": bool(whole),
            "data.next_sentence_prediction": bool(nsp)}


# --- Evaluate page ---------------------------------------------------------------------------------
TILES = (("perplexity", "Perplexity", "{:.2f}"), ("loss", "Loss per token", "{:.3f}"),
         ("accuracy", "Top-1 accuracy", "{:.3f}"), ("documents", "Documents", "{:,}"), ("tokens", "Tokens", "{:,}"))


def evaluate(run: Any, runs: list[Any], ev: dict[str, Any]) -> None:
    """Held-out perplexity before -> after, the validation curve, the hardest documents, slices, playground."""
    task = run.summary()["task"]
    after, before = ev.get("after"), ev.get("before")
    main = after or before or {}
    for col, (key, name, fmt) in zip(st.columns(len(TILES)), TILES):
        value = main.get(key)
        old = (before or {}).get(key) if after else None
        delta = value - old if key in ("perplexity", "loss", "accuracy") and value is not None and old is not None \
            else None
        col.metric(name, fmt.format(value) if value is not None else "-",
                   delta=f"{delta:+.3f} vs before" if delta is not None else None,
                   delta_color="inverse" if key in ("perplexity", "loss") else "normal")
    what = ("a fixed, seeded share of each document's tokens masked (the same positions before and after)"
            if task == "masked-lm" else "each token predicted from the ones before it")
    st.caption(f"Held-out test documents, each read on its own: {what}. Perplexity is exp(mean loss per token): "
               f"lower is better; top-1 accuracy is the share of those tokens guessed first.")
    if before and after and before.get("perplexity") and after.get("perplexity"):
        st.markdown(f"**Perplexity {before['perplexity']:.2f} → {after['perplexity']:.2f}** "
                    f"({after['perplexity'] / before['perplexity'] - 1:+.1%}) on the domain text.")
    if task == "masked-lm" and (before or {}).get("perplexity") and before["perplexity"] > 1000:
        st.caption("A perplexity this high before training is that of an untrained masked-LM head: a checkpoint "
                   "shipped as a sentence encoder (the built-in MiniLM) has none, so most of the first drop is the "
                   "head learning the vocabulary. The Playground shows the base model's guesses.")
    from .generic import score_table
    from workbench.tasks import TASKS

    st.dataframe(score_table(ev, TASKS[task]), hide_index=True, key="pt_scores",
                 column_config={c: SCORE for c in ("before", "after", "change")})
    _curve(run)
    tabs = st.tabs(["Hardest documents", "Slices", "Playground"])
    try:
        pred = run.predictions("after" if after else "before")
        missing = [c for c in ("row", "text", "loss", "tokens") if c not in pred]
        if missing:
            raise WorkbenchError(f"{run.predictions_file.name} lacks the column(s) {missing} a pre-training run's "
                                 f"predictions have: was it written by another task?")
    except Exception as e:  # RunError, a torn file while the run writes it, or a foreign file
        for t in tabs[:2]:
            t.info(str(e))
        pred = None
    if pred is not None:
        with tabs[0]:
            _documents_tab(run, pred, bool(after))
        with tabs[1]:
            _slices_tab(task, pred)
    with tabs[2]:
        playground(run, task)


def _curve(run: Any) -> None:
    from workbench.figures.training import metric_figure

    m = run.metrics()
    if "eval_perplexity" in m and m["eval_perplexity"].notna().any():
        st.plotly_chart(metric_figure({run.name: m}, keys=("eval_perplexity",), title="Validation perplexity"),
                        key="fig_pt_perplexity")
    else:
        st.caption("No validation perplexity was logged (training.eval_strategy: no, or no validation documents).")


def hardest_documents(after: pd.DataFrame, before: pd.DataFrame | None = None) -> pd.DataFrame:
    """The test documents, highest loss per token first, with the loss before training beside it."""
    out = after.copy()
    if before is not None and {"row", "loss"} <= set(before):
        old = before[["row", "loss"] + (["perplexity"] if "perplexity" in before else [])]
        out = out.merge(old.rename(columns={"loss": "loss before", "perplexity": "perplexity before"}),
                        on="row", how="left")
    lead = ["row", "loss", "loss before", "perplexity", "perplexity before", "tokens", "accuracy", "text"]
    cols = [c for c in lead if c in out] + [c for c in out if c not in lead]
    return out[cols].sort_values("loss", ascending=False, ignore_index=True)


def _documents_tab(run: Any, pred: pd.DataFrame, has_after: bool) -> None:
    try:
        before = run.predictions("before") if has_after else None
    except Exception:  # noqa: BLE001 - no "before" table: the after table alone
        before = None
    table = hardest_documents(pred, before)
    least = st.number_input("At least this many scored tokens", min_value=0, value=0, step=1, key="pt_min_tokens",
                            help="A short document's loss rests on a few tokens (a few masked ones in masked-lm): "
                                 "raise this to read the longer documents the model finds hard.")
    table = table[table["tokens"] >= least].reset_index(drop=True)
    st.caption(f"{len(table)} of {len(pred)} test documents, highest loss per token first: the text the model "
               f"finds most surprising (other domains, tables, references, noise). Corpus columns (paper, section, "
               f"file) kept.")
    st.dataframe(table, hide_index=True, key="pt_documents",
                 column_config={"text": st.column_config.TextColumn(width="large"),
                                **{c: SCORE for c in ("loss", "loss before", "perplexity", "perplexity before",
                                                      "accuracy") if c in table}})
    if len(table):
        shown = table.head(200).set_index("row", drop=False)
        key = f"pt_doc_row_{run.name}"  # per run: another run's hardest document is not this one's
        if st.session_state.get(key) not in shown.index:
            st.session_state.pop(key, None)
        row = st.selectbox("Read a document", [int(r) for r in shown.index], key=key,
                           format_func=lambda r: f"row {r} · loss {float(shown.loc[r, 'loss']):.3f}")
        st.text(str(shown.loc[row, "text"]))  # the user's text: plain, never markdown


def _slices_tab(task: str, pred: pd.DataFrame) -> None:
    from workbench.tasks import get_task

    report = get_task(task).error_report(pred)
    for i, (title, frame) in enumerate(report.items()):
        if title.startswith("slices"):
            st.markdown(f"**Loss by {', '.join(sorted(set(frame['slice']))) or 'slice'}** (per token, each slice's "
                        f"tokens together)")
            st.dataframe(frame, hide_index=True, key=f"pt_report_{i}",
                         column_config={"loss": SCORE, "perplexity": SCORE})


# --- Playground ------------------------------------------------------------------------------------
@st.cache_resource(max_entries=4, show_spinner="Loading the language model...")
def language_model(name_or_path: str, stamp: float) -> Any:
    """A model with its language-model head (`workbench.playground.load_lm`), one copy per path and version."""
    from workbench.playground import load_lm

    return load_lm(name_or_path)


def _base(run: Any) -> str:
    return run.config().model.name_or_path


def playground(run: Any, task: str) -> None:
    """Fill the mask (masked-lm) or continue the text (causal-lm): the base model and this run side by side."""
    if not run.model_dir.exists():
        st.info(f"{run.name} has no final model yet ({run.status().get('state')}).")
        return
    with widgets.shown_errors():
        base = _base(run)
        st.caption(f"The same text for the model this run started from ({Path(base).name}) and for the run itself. "
                   f"Nothing here is sent anywhere; models load once and stay in memory.")
        if task == "masked-lm":
            _fill_mask(run, base)
        else:
            _continue(run, base)


def _models(run: Any, base: str) -> list[tuple[str, Any]]:
    from workbench.estimate import local_model_dir as folder

    base_dir = folder(base)
    base_stamp = max((p.stat().st_mtime for p in base_dir.glob("*") if p.is_file()), default=0.0) if base_dir else 0.0
    return [(f"Base: {Path(base).name}", language_model(base, base_stamp)),
            (f"This run: {run.name}", language_model(str(run.path), widgets.model_stamp(run)))]


def top_tokens(masks: list[list[dict[str, Any]]]) -> pd.DataFrame:
    """`fill_mask`'s answer as one table: mask number, rank, token, probability."""
    return pd.DataFrame([{"mask": m + 1, "rank": i + 1, "token": t["text"] or t["token"],
                          "probability": t["probability"]} for m, top in enumerate(masks) for i, t in enumerate(top)],
                        columns=["mask", "rank", "token", "probability"])


def _side_by_side(run: Any, base: str, draw: Any) -> None:
    """Base and adapted in two columns, each with its title and note; `draw(title, lm)` fills a column, and a
    `WorkbenchError` it raises is shown in that column only."""
    for col, (title, lm) in zip(st.columns(2), _models(run, base)):
        with col:
            st.markdown(f"**{title}**")
            if lm.note:
                st.info(lm.note)
            with widgets.shown_errors():
                draw(title, lm)


def _fill_mask(run: Any, base: str) -> None:
    from workbench.playground import fill_mask

    text = st.text_input("A text with [MASK] where a word should be guessed", MASK_EXAMPLE, key="pt_mask_text")
    k = st.slider("Tokens shown per mask (top-k)", 1, 30, 10, key="pt_mask_k")
    if not st.button("Fill the mask", key="pt_mask_go", icon=":material/bolt:"):
        return
    _side_by_side(run, base, lambda title, lm: st.dataframe(
        top_tokens(fill_mask(lm, text, k)), hide_index=True, key=f"pt_mask_{title[:4]}",
        column_config={"probability": PROB}))


def _continue(run: Any, base: str) -> None:
    from workbench.playground import continue_text

    text = st.text_area("The beginning of a text", CONTINUE_EXAMPLE, key="pt_cont_text")
    n = st.slider("New tokens (max_new_tokens)", 1, 200, 40, key="pt_cont_n")
    st.caption("Greedy: the most likely token each time, so the two models' continuations differ only by what "
               "they learned. Raw text, no chat template: a pre-trained model continues documents.")
    if not st.button("Continue the text", key="pt_cont_go", icon=":material/bolt:"):
        return
    def draw(title: str, lm: Any) -> None:
        out = continue_text(lm, text, max_new_tokens=int(n))
        st.text(text + out if out.strip() else text + "\n(nothing: the model ended the text at once)")

    _side_by_side(run, base, draw)
