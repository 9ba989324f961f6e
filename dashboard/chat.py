"""Chat page: talk to a fine-tuned causal-lm-sft run or to a base model, and compare the two on the same prompt.

The page only arranges widgets around `workbench.generate` (the functions `workbench generate` and the SFT
task's predictions use): the conversation goes through the model's chat template and generation stops at the
end of the turn. Models load once per folder (`st.cache_resource`, keyed by the path and the model files'
modification time) and are shared by every session; the history lives in this session only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from workbench.assets import BUILTIN_MODELS
from workbench.generate import Sampling
from workbench.rundir import list_runs

from . import widgets

TASKS = ("causal-lm-sft", "seq2seq")  # the tasks whose runs write text
ENCODERS = ("bert", "roberta", "deberta", "distilbert", "electra", "xlm-roberta")  # built-ins that cannot write
SOURCES = ("Fine-tuned run", "Base model")
HELP = {
    "temperature": "0: greedy decoding, the most likely token every time (the same answer to the same prompt). "
                   "Above 0: sample from the softmax at this temperature; higher is more varied and more often "
                   "wrong (0.7 is a common choice).",
    "top_p": "Nucleus sampling: draw only from the smallest set of tokens whose probabilities add up to this "
             "share. 1: no limit. Used only when temperature > 0.",
    "top_k": "Draw only from the k most likely tokens. 0: no limit. Used only when temperature > 0.",
    "repetition_penalty": "Above 1 makes tokens already in the conversation less likely (1.1-1.3 breaks loops a "
                          "small model falls into); 1: off.",
    "max_new_tokens": "The longest answer, in tokens. Generation stops earlier when the model ends its turn "
                      "(the end-of-turn token of its chat template).",
    "system": "Optional instructions put first in every conversation as a system message (the chat template "
              "decides how the model sees it).",
}


@st.cache_resource(max_entries=2, show_spinner="Loading the model...")
def generator(path: str, stamp: float) -> tuple[Any, Any, int]:
    """(model, tokenizer, max_length) of a run's fine-tuned model or of a base model; never runs a model's
    own code and never unpickles (the defaults of `load_generator`)."""
    from workbench.generate import load_generator

    return load_generator(path)


def page() -> None:
    st.title("Chat")
    st.caption("Talk to a fine-tuned causal-lm-sft run or to a base model; turn on compare to see the base "
               "model's and the fine-tuned model's answers to the same prompt side by side.")
    target = _pick_target()
    sampling, system = _settings()
    if target is None:
        return
    problems = sampling.problems()
    for p in problems:
        st.error(p, icon=":material/error:")
    compare = st.toggle("Compare with the base model", key="chat_compare", disabled=target["base"] is None,
                        help="Each prompt is answered twice: by the model the run started from and by the "
                             "fine-tuned one, with the same settings. Needs a run." if target["base"] is None else
                        f"Each prompt is also answered by {target['base']}, the model {target['name']} started "
                        f"from, with the same settings.")
    compare = compare and target["base"] is not None
    histories = st.session_state.setdefault("chat_histories", {})
    history = histories.setdefault(target["path"], [])
    prompt = st.chat_input(f"Message {target['name']}", key="chat_prompt", disabled=bool(problems))
    for turn in history:
        _show_turn(turn, target["name"])
    if prompt and prompt.strip():
        turn = _new_turn(target, history, prompt, system, sampling, compare)
        if turn is not None:
            history.append(turn)
    if history and st.button("Clear the conversation", key="chat_clear", icon=":material/delete_sweep:"):
        histories[target["path"]] = []
        st.rerun()
    if not history:
        st.info("Type a message below. The model sees the whole conversation (its own earlier answers included) "
                "through its chat template.", icon=":material/chat:")


def _pick_target() -> dict[str, Any] | None:
    """The model to talk to: {name, path, stamp, base (the run's starting model, or None)}."""
    kind = st.radio("Talk to", SOURCES, horizontal=True, key="chat_kind")
    if kind == SOURCES[0]:
        runs = [r for r in list_runs(widgets.runs_folder()) if r.summary().get("task") in TASKS]
        run = widgets.pick_run("Run", runs, key="chat_run", help="causal-lm-sft and seq2seq runs in the runs "
                               "folder; the fine-tuned model is the one the run saved at the end. A seq2seq model "
                               "reads the conversation flattened to one source text.")
        if run is None:
            st.info(f"No causal-lm-sft or seq2seq runs in {widgets.runs_folder()} yet: train one (Train page), "
                    f"or talk to a base model.", icon=":material/info:")
            return None
        if not run.model_dir.exists():
            st.info(f"{run.name} has no final model yet ({run.status().get('state')}): it appears here once the "
                    f"run completes.")
            return None
        base = None
        with widgets.shown_errors():
            from workbench.config import RunConfig

            # read as recorded, never loaded from: the run's model path is only named, loaded by load_generator
            base = RunConfig.from_yaml(run.config_file).model.name_or_path or None
        st.caption(f"{run.name}: {run.status().get('state')}, started from `{base}`.")
        return {"name": run.name, "path": str(run.path), "stamp": widgets.model_stamp(run), "base": base}
    where = st.radio("Model", ["Built-in", "Folder"], horizontal=True, key="chat_model_kind")
    if where == "Built-in":
        names = [n for n, m in BUILTIN_MODELS.items() if m.architecture not in ENCODERS]
        name = st.selectbox("Built-in model", names, key="chat_builtin",
                            format_func=lambda n: f"{n}: {BUILTIN_MODELS[n].description}")
    else:
        name = st.text_input("Model folder", key="chat_folder", placeholder="/path/to/model (config.json, "
                             "model.safetensors, tokenizer) or a .gguf file").strip()
        if not name:
            return None
        if not Path(name).expanduser().exists():
            st.error(f"{name} does not exist. Give the folder written by `save_pretrained` (config.json, "
                     f"model.safetensors and the tokenizer files) or a GGUF file.", icon=":material/error:")
            return None
        name = str(Path(name).expanduser())
    if not name:
        return None
    return {"name": Path(name).name if where == "Folder" else name, "path": name, "stamp": _stamp(name),
            "base": None}


def _stamp(path: str) -> float:
    """Changes when a model folder's files are rewritten (part of the loaded model's cache key)."""
    p = Path(path).expanduser()
    files = [f for f in p.glob("*") if f.is_file()] if p.is_dir() else [p] if p.is_file() else []
    return max((f.stat().st_mtime for f in files), default=0.0)


def _settings() -> tuple[Sampling, str]:
    with st.sidebar:
        st.subheader("Generation")
        temperature = st.slider("temperature", 0.0, 2.0, 0.0, 0.05, key="chat_temperature",
                                help=HELP["temperature"])
        sample = temperature > 0
        top_p = st.slider("top-p", 0.05, 1.0, 1.0, 0.05, key="chat_top_p", help=HELP["top_p"], disabled=not sample)
        top_k = st.number_input("top-k", 0, 1000, 0, key="chat_top_k", help=HELP["top_k"], disabled=not sample)
        penalty = st.slider("repetition penalty", 1.0, 2.0, 1.0, 0.05, key="chat_penalty",
                            help=HELP["repetition_penalty"])
        max_new = st.number_input("max new tokens", 1, 2048, 128, key="chat_max_new", help=HELP["max_new_tokens"])
        system = st.text_area("System prompt (optional)", key="chat_system", help=HELP["system"])
    return Sampling(max_new_tokens=int(max_new), temperature=float(temperature), top_p=float(top_p),
                    top_k=int(top_k), repetition_penalty=float(penalty)), system.strip()


def _conversation(history: list[dict[str, Any]], prompt: str, system: str, side: str) -> list[dict[str, str]]:
    """The message list one model answers: the earlier exchanges with its own answers (a turn it did not answer,
    from before compare was on, carries the other model's answer), then the new prompt."""
    from workbench.generate import as_conversation

    msgs: list[dict[str, str]] = []
    for t in history:
        msgs += [{"role": "user", "content": t["user"]},
                 {"role": "assistant", "content": t.get(side, t.get("answer", ""))}]
    return as_conversation(msgs + [{"role": "user", "content": prompt}], system or None)


def _stream(where: Any, path: str, stamp: float, conversation: list[dict[str, str]], sampling: Sampling) -> str:
    """Write the model's answer into `where` token by token as it is generated (`st.write_stream`); return it."""
    from workbench.generate import iter_answer

    model, tok, max_length = generator(path, stamp)
    streamed = where.write_stream(iter_answer(model, tok, conversation, sampling=sampling, max_length=max_length))
    answer = (streamed if isinstance(streamed, str) else "".join(map(str, streamed))).strip()
    if not answer:
        where.caption("(an empty answer: the model ended its turn at once)")
    return answer


def _new_turn(target: dict[str, Any], history: list[dict[str, Any]], prompt: str, system: str, sampling: Sampling,
              compare: bool) -> dict[str, Any] | None:
    """Show the new prompt and stream the answer(s) to it; the finished turn, or None when generation failed
    (the error is shown and the history is left as it was)."""
    turn: dict[str, Any] = {"user": prompt}
    with st.chat_message("user"):
        st.text(prompt)
    with st.chat_message("assistant"), widgets.shown_errors():
        if compare:
            left, right = st.columns(2)
            right.caption(f"Fine-tuned: {target['name']}")
            left.caption(f"Base model: {target['base']}")
            turn["answer"] = _stream(right, target["path"], target["stamp"],
                                     _conversation(history, prompt, system, "answer"), sampling)
            turn["base"] = _stream(left, target["base"], _stamp(target["base"]),
                                   _conversation(history, prompt, system, "base"), sampling)
            turn["base_name"] = target["base"]
        else:
            turn["answer"] = _stream(st.container(), target["path"], target["stamp"],
                                     _conversation(history, prompt, system, "answer"), sampling)
    return turn if "answer" in turn and ("base" in turn or not compare) else None


def _show_turn(turn: dict[str, Any], name: str) -> None:
    with st.chat_message("user"):
        st.text(turn["user"])
    with st.chat_message("assistant"):
        if "base" in turn:
            left, right = st.columns(2)
            left.caption(f"Base model: {turn['base_name']}")
            _text(left, turn["base"])
            right.caption(f"Fine-tuned: {name}")
            _text(right, turn["answer"])
        else:
            _text(st.container(), turn["answer"])


def _text(where: Any, answer: str) -> None:
    if answer.strip():
        where.markdown(answer)
    else:
        where.caption("(an empty answer: the model ended its turn at once)")
