"""Train page: model, method and hyper-parameters into one RunConfig, an estimate, Launch, live progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from workbench.assets import BUILTIN_MODELS
from workbench.config import PEFT_METHODS, RunConfig, field_help
from workbench.errors import ConfigError, ModelError
from workbench.estimate import model_summary
from workbench.launch import launch
from workbench.peft_methods import EXPLAIN
from workbench.rundir import list_runs
from workbench.tasks import TASKS

from . import estimate_panel, monitor, sections, widgets

HELP = field_help()
# Presets set these dotted fields; the adapter learning rate (every method but full) is ~10x the full one.
PRESETS: dict[str, dict[str, Any]] = {
    "quick look": {"training.num_train_epochs": 1.0, "training.learning_rate": 5e-5, "lora_lr": 5e-4,
                   "data.max_train_samples": 1000, "data.max_eval_samples": 500, "data.max_length": 128,
                   "training.per_device_train_batch_size": 16, "training.logging_steps": 5,
                   "training.early_stopping_patience": 0},
    "good default": {"training.num_train_epochs": 3.0, "training.learning_rate": 5e-5, "lora_lr": 2e-4,
                     "data.max_train_samples": 0, "data.max_eval_samples": 0, "data.max_length": 256,
                     "training.per_device_train_batch_size": 16, "training.logging_steps": 10,
                     "training.early_stopping_patience": 0},
    "thorough": {"training.num_train_epochs": 6.0, "training.learning_rate": 3e-5, "lora_lr": 1e-4,
                 "data.max_train_samples": 0, "data.max_eval_samples": 0, "data.max_length": 512,
                 "training.per_device_train_batch_size": 16, "training.logging_steps": 10,
                 "training.early_stopping_patience": 2},
}
MAIN = [("training.learning_rate", "%.1e"), ("training.num_train_epochs", "%.1f"),
        ("training.per_device_train_batch_size", None), ("data.max_length", None),
        ("data.max_train_samples", None), ("data.max_eval_samples", None),
        ("training.gradient_accumulation_steps", None), ("training.early_stopping_patience", None)]
ADVANCED = [("training.warmup_steps", "%.2f"), ("training.weight_decay", "%.3f"), ("training.logging_steps", None),
            ("training.seed", None), ("data.validation_size", "%.2f"), ("data.test_size", "%.2f")]
ZERO_IS_NONE = ("data.max_train_samples", "data.max_eval_samples", "training.early_stopping_patience")
PERSIST = {"persist_state": "session"}  # keep the form while visiting other pages


def page() -> None:
    st.title("Train")
    _init_state()
    left, right = st.columns([3, 2], gap="large")
    with left:
        task = _task_section()
        model = _model_section()
        _apply_task_defaults(task, model)
        data = sections.hook(task, "train_data")(task)
        _method_section()
        _hyper_section()
        augment = _augment_section(task)
        scale = _distributed_section()
    overrides = {"task": task, "model.name_or_path": model, **data, **_form_values(), **augment,
                 **_task_defaults(task), **scale}
    try:
        cfg = RunConfig().override(overrides)
        problems = cfg.validate()
        from workbench.distributed import cpu_problem
        if (why := cpu_problem(cfg)) is not None:  # this machine, not the config: DeepSpeed without a GPU
            problems.append(why)
    except ConfigError as e:
        cfg, problems = None, e.problems
    with right:
        st.subheader("Before you launch")
        for p in problems:
            st.error(p, icon=":material/error:")
        report_problems = estimate_panel.show(cfg) if cfg is not None and not problems else ["config"]
        name = st.text_input("Run name (optional)", key="train_name", help=HELP["name"], **PERSIST)
        if st.button("Launch", type="primary", icon=":material/rocket_launch:", disabled=bool(problems or
                     report_problems), help="Starts training in its own process: closing this tab does not stop it."):
            with widgets.shown_errors():
                handle = launch(cfg.override({"name": name.strip() or None,
                                              "output_dir": str(widgets.runs_folder())}))
                st.session_state["run"] = handle.run.name
                st.toast(f"Started {handle.run.name}", icon=":material/rocket_launch:")
    st.divider()
    st.subheader("Live run")
    runs = list_runs(widgets.runs_folder())
    run = widgets.pick_run("Run", runs, key="run", help="Runs keep going when this tab closes; reopen to watch.")
    if run is None:
        st.info("No runs yet: launch one above.")
        return
    monitor.run_monitor(run)


def _init_state() -> None:
    if "t.training.learning_rate" in st.session_state:
        return
    def flat(node: dict[str, Any], prefix: str) -> None:  # sections inside sections: peft.lora.r
        for k, v in node.items():
            if isinstance(v, dict) and k != "class_weights":
                flat(v, f"{prefix}{k}.")
            else:
                st.session_state.setdefault(f"{prefix}{k}", v)

    d = RunConfig().to_dict()
    for section in ("training", "data", "peft", "distributed"):
        flat(d[section], f"t.{section}.")
    for method in PEFT_METHODS[1:]:  # text boxes hold "" for empty, number boxes 0
        for name, kind in _section_fields(method):
            key = f"t.peft.{method}.{name}"
            if st.session_state.get(key) is None:
                st.session_state[key] = 0 if kind == "optional int" else ""
            elif kind == "list":
                st.session_state[key] = ", ".join(str(x) for x in st.session_state[key])
    st.session_state["t.training.bf16"] = "auto"
    # A browser reload starts a new session: the chosen preset comes back from the address (?preset=...).
    url = st.query_params.get("preset")
    st.session_state["train_preset"] = url if url in PRESETS else "good default"
    _apply_preset()


def _apply_preset() -> None:
    preset = PRESETS.get(st.session_state.get("train_preset") or "")
    if not preset:
        return
    lora = st.session_state.get("t.peft.method", "full") != "full"
    for k, v in preset.items():
        if k != "lora_lr":
            st.session_state[f"t.{k}"] = v
    st.session_state["t.training.learning_rate"] = preset["lora_lr"] if lora else preset["training.learning_rate"]


def _apply_task_defaults(task: str, model: str) -> None:
    """When the task or model changes, switch the form to the settings the task's section recommends (a
    causal LM's SFT: LoRA), with the preset's learning rate for that method unless the task sets its own
    (continued pre-training does); the user may change them after."""
    defaults = getattr(sections.SECTIONS.get(task), "train_defaults", None)
    if st.session_state.get("train_defaults_for") == [task, model] or not callable(defaults):
        return
    st.session_state["train_defaults_for"] = [task, model]
    chosen = defaults(model)
    for key, value in chosen.items():
        st.session_state[f"t.{key}"] = value
    _apply_preset()
    for key, value in chosen.items():  # a task's own learning rate or epochs win over the preset's
        st.session_state[f"t.{key}"] = value


def _task_defaults(task: str) -> dict[str, Any]:
    """Settings whose default belongs to another task: the metric that picks the best checkpoint must be
    one the task reports (a tagger has no `accuracy`), so it becomes the task's headline metric, or the one its
    validation passes compute in its stead (question answering: `span_f1`; answer F1 needs the test split)."""
    t = TASKS.get(task)
    metric = RunConfig().training.metric_for_best_model
    best = getattr(t, "validation_headline", getattr(t, "headline", None))
    return {"training.metric_for_best_model": best} if t is not None and metric not in t.directions else {}


def _model_section() -> str:
    st.subheader("Model")
    kind = st.radio("Start from", ["Built-in", "Local folder", "Hub id", "Finished run"], horizontal=True,
                    key="train_model_kind", **PERSIST)
    if kind == "Finished run":
        name = _run_model()
    elif kind == "Built-in":
        name = st.selectbox("Built-in model", list(BUILTIN_MODELS), key="train_builtin",
                            help=HELP["model.name_or_path"],
                            format_func=lambda n: f"{n}: {BUILTIN_MODELS[n].description}", **PERSIST)
    elif kind == "Local folder":
        name = st.text_input("Model folder", key="train_folder", placeholder="/path/to/model (config.json + "
                             "model.safetensors)", help=HELP["model.name_or_path"], **PERSIST).strip()
        if name:
            from workbench.models import check_model_dir  # torch comes with it: only when a folder is given

            try:
                if not Path(name).expanduser().is_dir():
                    raise ModelError(f"Model folder {name} does not exist. Give the folder written by "
                                     f"`save_pretrained` (config.json and model.safetensors).")
                check_model_dir(Path(name).expanduser())
            except ModelError as e:
                st.error(str(e), icon=":material/error:")
                name = ""
    else:
        name = st.text_input("Hub id", key="train_hub", placeholder="bert-base-uncased", **PERSIST).strip()
        st.caption("Needs a network to download; the config is checked when the run starts.")
    st.session_state["train_model"] = name  # the Data page measures token lengths with this tokenizer
    facts = model_summary(name) if name else {}
    if facts:
        st.caption(" · ".join(f"{k.replace('_', ' ')} {v}" for k, v in facts.items()))
    return name


def startable_runs(root: Path) -> list[Any]:
    """Completed runs whose model folder a new run can start from (full weights: a LoRA run's merged copy;
    pre-training runs always have them), newest first."""
    from workbench.models import run_model_folder  # torch comes with it: only when runs are offered

    out = []
    for run in list_runs(root):
        if run.status().get("state") != "completed":
            continue
        try:
            run_model_folder(run.path)
        except ModelError:  # an adapter alone, or no model folder
            continue
        out.append(run)
    return out


def _run_model() -> str:
    """A finished run as the starting model (`model.name_or_path` is its run directory): domain-adaptive
    pre-training, then a fine-tune from it."""
    runs = startable_runs(widgets.runs_folder())
    if not runs:
        st.info("No finished run with full weights yet: a completed run appears here (a LoRA run needs "
                "peft.merge_adapter: true; pre-training runs always qualify).", icon=":material/info:")
        return ""
    by_path = {str(r.path): r for r in runs}

    def label(path: str) -> str:
        s = by_path[path].summary()
        return f"{s['run']} · {s['task']} · from {Path(str(s['model'])).name}"

    if st.session_state.get("train_run_model") not in by_path:
        st.session_state.pop("train_run_model", None)
    path = st.selectbox("Finished run", list(by_path), key="train_run_model", format_func=label,
                        help=HELP["model.name_or_path"] + " A run directory starts from that run's weights and "
                        "tokenizer.", **PERSIST)
    return path or ""


def _task_section() -> str:
    """The task, from the registry; shown only once there is more than one to choose from."""
    names, elsewhere = sections.trainable_tasks(TASKS)
    if len(names) == 1:
        return names[0]
    st.subheader("Task")
    if elsewhere:
        st.caption(f"Also registered, trained from the CLI or a notebook for now: {', '.join(elsewhere)} "
                   f"(`workbench train CONFIG` with `task: {elsewhere[0]}`).")
    chosen = (st.session_state.get("data_choice") or {}).get("task")
    if "train_task" not in st.session_state and chosen in names:  # the Data page last checked this task's data
        st.session_state["train_task"] = chosen
    name = st.selectbox("Task", names, key="train_task", help=field_help()["task"], **PERSIST)
    task = TASKS[name]
    needs = [f"{r.name}{'' if r.required else ' (optional)'}: {r.help}" for r in task.roles]
    st.caption(task.description + (" Data: " + "; ".join(needs) + "." if needs else ""))
    return name


def _method_section() -> None:
    st.subheader("Method")
    method = st.radio("Fine-tuning method", list(PEFT_METHODS), horizontal=True, key="t.peft.method",
                      help=HELP["peft.method"], on_change=_apply_preset, **PERSIST)
    st.caption(EXPLAIN[method])
    if method == "full":
        st.checkbox("keep input embeddings fixed", key="t.peft.freeze_embeddings",
                    help=HELP["peft.freeze_embeddings"], **PERSIST)
        return
    fields = _section_fields(method)
    cols = st.columns(4)
    for i, (name, kind) in enumerate(fields):
        key, where = f"t.peft.{method}.{name}", cols[i % 4]
        label, help_text = name.replace("_", " "), HELP[f"peft.{method}.{name}"]
        if kind == "bool":
            where.checkbox(label, key=key, help=help_text, **PERSIST)
        elif kind in ("text", "list"):
            where.text_input(label, key=key, help=help_text + (" Comma-separated." if kind == "list" else ""),
                             placeholder="default", **PERSIST)
        elif kind == "float":
            where.number_input(label, min_value=0.0, step=0.05, format="%.3g", key=key, help=help_text, **PERSIST)
        else:  # int, or int | None where 0 means empty
            where.number_input(label, min_value=0, step=1, key=key, help=help_text +
                               (" 0 means empty." if kind == "optional int" else ""), **PERSIST)
    if method in ("lora", "adalora", "ia3"):
        st.checkbox("also save a merged full model", key="t.peft.merge_adapter", help=HELP["peft.merge_adapter"],
                    **PERSIST)


def _section_fields(method: str) -> list[tuple[str, str]]:
    """(field, widget kind) of a method's section (`peft.lora`, ...), from its dataclass: every field is shown
    with its config help, so a field added to the config appears here without a page change."""
    import dataclasses
    import typing

    from workbench import config

    section = typing.get_type_hints(config.PeftConfig)[method]
    out = []
    for f, hint in ((f, typing.get_type_hints(section)[f.name]) for f in dataclasses.fields(section)):
        args = typing.get_args(hint)
        if hint is bool:
            out.append((f.name, "bool"))
        elif hint is float:
            out.append((f.name, "float"))
        elif hint is int:
            out.append((f.name, "int"))
        elif int in args:
            out.append((f.name, "optional int"))
        elif str in args:
            out.append((f.name, "text"))
        else:
            out.append((f.name, "list"))
    return out


def _peft_values() -> dict[str, Any]:
    """Every method section's fields from the form, back in their config types ("" and 0 mean empty)."""
    out: dict[str, Any] = {"peft.merge_adapter": bool(st.session_state.get("t.peft.merge_adapter"))
                           and st.session_state.get("t.peft.method") in ("lora", "adalora", "ia3")}
    for method in PEFT_METHODS[1:]:
        for name, kind in _section_fields(method):
            v = st.session_state.get(f"t.peft.{method}.{name}")
            if kind == "list":
                items = [x.strip() for x in str(v or "").split(",") if x.strip()]
                if name == "layers":
                    items = [int(x) if x.lstrip("-").isdigit() else x for x in items]
                v = items or None
            elif kind == "text":
                v = str(v or "").strip() or None
            elif kind == "optional int":
                v = int(v) if v else None
            out[f"peft.{method}.{name}"] = v
    return out


def _hyper_section() -> None:
    st.subheader("Hyper-parameters")
    preset = st.segmented_control("Preset", list(PRESETS), key="train_preset", on_change=_apply_preset,
                                  help="Fills the knobs below; change any of them afterwards.", **PERSIST)
    if st.query_params.get("preset") != preset:  # kept in the address so that a reload keeps it
        if preset:
            st.query_params["preset"] = preset
        else:
            st.query_params.pop("preset", None)
    cols = st.columns(4)
    for i, (key, fmt) in enumerate(MAIN):
        _knob(cols[i % 4], key, fmt)
    with st.expander("More settings"):
        cols = st.columns(3)
        for i, (key, fmt) in enumerate(ADVANCED):
            _knob(cols[i % 3], key, fmt)
        c = st.columns(3)
        c[0].selectbox("lr scheduler", ["linear", "cosine", "constant", "constant_with_warmup"],
                       key="t.training.lr_scheduler_type", help=HELP["training.lr_scheduler_type"], **PERSIST)
        c[1].selectbox("eval strategy", ["epoch", "no"], key="t.training.eval_strategy",
                       help=HELP["training.eval_strategy"], **PERSIST)
        c[2].selectbox("bf16", ["auto", True, False], key="t.training.bf16", help=HELP["training.bf16"], **PERSIST)
        c = st.columns(3)
        c[0].selectbox("class weights", ["none", "balanced"], key="t.training.class_weights",
                       help=HELP["training.class_weights"] + " A {label: weight} map is set in a config file "
                       "(`workbench train`).", **PERSIST)
        _adversarial_and_tracking()


def _adversarial_and_tracking() -> None:
    """Adversarial training (its size; steps and step size for PGD) and the experiment trackers."""
    c = st.columns(4)
    method = c[0].selectbox("adversarial", ["none", "fgm", "pgd"], key="t.training.adversarial",
                            help=HELP["training.adversarial"], **PERSIST)
    if method != "none":
        c[1].number_input("epsilon", min_value=0.0, step=0.1, format="%.3f", key="t.training.adversarial_epsilon",
                          help=HELP["training.adversarial_epsilon"], **PERSIST)
    if method == "pgd":
        c[2].number_input("pgd steps", min_value=1, max_value=100, key="t.training.adversarial_steps",
                          help=HELP["training.adversarial_steps"], **PERSIST)
        c[3].number_input("pgd alpha", min_value=0.0, step=0.05, format="%.3f", key="t.training.adversarial_alpha",
                          help=HELP["training.adversarial_alpha"], **PERSIST)
    st.multiselect("report to", ["tensorboard", "mlflow", "wandb"], key="t.training.report_to",
                   help=HELP["training.report_to"], **PERSIST)


def _augment_section(task: str) -> dict[str, Any]:
    """`data.augment` knobs, for tasks it applies to; the counts appear under "Before you launch"."""
    from workbench.augment import APPLIES, augment_kind

    kind = augment_kind(TASKS[task])
    if kind is None:
        return {}
    chosen = st.session_state.get("t.data.augment.operations") or []
    st.session_state["t.data.augment.operations"] = [op for op in chosen if op in APPLIES[kind]]  # task changed
    with st.expander("Data augmentation"):
        c = st.columns([2, 1, 1])
        ops = c[0].multiselect("operations", list(APPLIES[kind]), key="t.data.augment.operations",
                               help=HELP["data.augment.operations"], **PERSIST)
        c[1].number_input("copies", min_value=1, max_value=100, key="t.data.augment.copies",
                          help=HELP["data.augment.copies"], **PERSIST)
        c[2].number_input("word share", min_value=0.01, max_value=0.9, step=0.05, key="t.data.augment.word_share",
                          help=HELP["data.augment.word_share"], **PERSIST)
        if "paraphrase" in ops:
            c = st.columns([2, 1])
            c[0].text_input("paraphrase model", key="t.data.augment.paraphrase_model",
                            help=HELP["data.augment.paraphrase_model"], **PERSIST)
            c[1].number_input("max paraphrased", min_value=0, key="t.data.augment.max_paraphrased",
                              help=HELP["data.augment.max_paraphrased"] + " 0 means all.", **PERSIST)
            st.caption("Paraphrasing runs at the start of training, before the first step: on a CPU SmolLM2-135M "
                       "takes seconds per text, so 200 texts add minutes. The run's phase shows its progress.")
    keys = ("operations", "copies", "word_share", "paraphrase_model", "max_paraphrased")
    out = {f"data.augment.{k}": st.session_state.get(f"t.data.augment.{k}") for k in keys}
    out["data.augment.operations"] = [op for op in out["data.augment.operations"] or [] if op in APPLIES[kind]]
    out["data.augment.max_paraphrased"] = out["data.augment.max_paraphrased"] or None
    return out


def _distributed_section() -> dict[str, Any]:
    """Several processes (one per GPU, or CPU processes) and how they share the model: `distributed.*`. The run's
    own process starts torchrun; several machines are started from a terminal (`workbench launch-cmd`)."""
    import torch

    gpus = torch.cuda.device_count()
    with st.expander("Processes and sharding"):
        c = st.columns([2, 1])
        strategy = c[0].selectbox("strategy", ["none", "ddp", "fsdp", "deepspeed"], key="t.distributed.strategy",
                                  help=HELP["distributed.strategy"], **PERSIST)
        c[1].number_input("processes", min_value=1, max_value=max(8, gpus), key="t.distributed.nproc_per_node",
                          help=HELP["distributed.nproc_per_node"] + (f" This machine has {gpus} GPU(s)." if gpus else
                                                                     " This machine has no GPU: CPU processes."),
                          **PERSIST)
        if strategy == "fsdp":
            c = st.columns(2)
            c[0].selectbox("sharding", ["FULL_SHARD", "SHARD_GRAD_OP"], key="t.distributed.fsdp.sharding_strategy",
                           help=HELP["distributed.fsdp.sharding_strategy"], **PERSIST)
            c[1].checkbox("CPU offload", key="t.distributed.fsdp.cpu_offload",
                          help=HELP["distributed.fsdp.cpu_offload"], **PERSIST)
        if strategy == "deepspeed":
            c = st.columns(3)
            c[0].selectbox("ZeRO stage", [2, 3], key="t.distributed.deepspeed.zero_stage",
                           help=HELP["distributed.deepspeed.zero_stage"], **PERSIST)
            c[1].checkbox("offload optimizer", key="t.distributed.deepspeed.offload_optimizer",
                          help=HELP["distributed.deepspeed.offload_optimizer"], **PERSIST)
            c[2].checkbox("offload weights", key="t.distributed.deepspeed.offload_params",
                          help=HELP["distributed.deepspeed.offload_params"], **PERSIST)
        st.caption("Several machines: `workbench launch-cmd CONFIG` prints the command each one runs (and a Slurm "
                   "line); the run's launch/ folder keeps the exact launch. The memory per process of each strategy "
                   "is under Before you launch.")
    keys = ("strategy", "nproc_per_node", "fsdp.sharding_strategy", "fsdp.cpu_offload", "deepspeed.zero_stage",
            "deepspeed.offload_optimizer", "deepspeed.offload_params")
    return {f"distributed.{k}": st.session_state.get(f"t.distributed.{k}") for k in keys}


def _knob(where: Any, key: str, fmt: str | None) -> None:
    label = key.split(".")[-1].replace("per_device_train_", "").replace("_", " ")
    value = st.session_state.get(f"t.{key}")
    is_float = isinstance(value, float) or fmt is not None
    help_text = HELP[key] + (" 0 means none." if key in ZERO_IS_NONE else "")
    if st.session_state.get(f"t.{key}") is None:
        st.session_state[f"t.{key}"] = 0
    where.number_input(label, min_value=0.0 if is_float else 0, format=fmt, key=f"t.{key}", help=help_text,
                       step=_step(key) if is_float else 1, **PERSIST)


def _step(key: str) -> float:
    return {"training.learning_rate": 1e-5, "training.num_train_epochs": 1.0, "training.warmup_steps": 0.05,
            "training.weight_decay": 0.01, "data.validation_size": 0.05, "data.test_size": 0.05}.get(key, 0.1)


def _form_values() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _ in MAIN + ADVANCED:
        v = st.session_state.get(f"t.{key}")
        out[key] = None if key in ZERO_IS_NONE and not v else v
    for key in ("training.lr_scheduler_type", "training.eval_strategy", "training.bf16", "peft.method",
                "peft.freeze_embeddings", "training.class_weights",
                "training.adversarial", "training.adversarial_epsilon", "training.adversarial_steps",
                "training.adversarial_alpha", "training.report_to"):
        out[key] = st.session_state.get(f"t.{key}")
    out.update(_peft_values())
    if out["training.eval_strategy"] == "no":
        out["training.early_stopping_patience"] = None
    return out
