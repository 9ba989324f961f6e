"""Training on several processes or machines: the run handed to the engines people already run.

The workbench does not grow its own distributed system. A run whose `distributed` section asks for more than one
process is started with `torchrun` (PyTorch's launcher), one `python -m workbench.worker RUN` per process, and
`transformers.Trainer`/accelerate do the rest: DDP, FSDP (version 2) or DeepSpeed ZeRO, configured from the run's
config.yaml. What this module adds:

- `config_problems`: what cannot work, said before anything starts (DeepSpeed without a GPU, a ZeRO-2 parameter
  offload, a PEFT method FSDP does not shard, ...);
- `engine_arguments`: the `TrainingArguments` fields of the chosen strategy; `deepspeed_config` and
  `accelerate_config`: the same settings as the files those engines read, written into the run's `launch/` folder
  with the exact `torchrun` command, so the launch can be repeated by hand (`write_launch_files`);
- `launcher_argv` / `cluster_command`: the command for this machine, and for a cluster scheduler (Slurm);
- `supervise`: the run's own process on machine 0 runs the launcher, turns a stop request into a stop every rank
  sees, and when the launcher fails before rank 0 could say why (a rendezvous that never answered, a rank killed
  by the system), records the reason in status.json and leaves no process behind;
- `cpu_fsdp`: accelerate 1.16 turns FSDP into plain DDP on CPUs without a word (its FSDP branch is for GPUs
  only); torch's FSDP2 itself shards on CPUs over gloo, so on a CPU run the plugin is put back
  (`trainer.WorkbenchTrainer.create_accelerator_and_postprocess`);
- `consolidate`: the sharded model gathered into one normal safetensors folder at the end, written beside the
  run's `model/` and renamed into place, so a stop or a crash never leaves half a model.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .errors import RunError, WorkbenchError

ZERO_OFFLOAD = {"device": "cpu", "pin_memory": True}
# PEFT methods sharded by FSDP here (tested); the prompt-learning methods add inputs FSDP's wrap does not know.
FSDP_METHODS = ("full", "lora")


class DistributedError(WorkbenchError):
    """A distributed launch that cannot work here, with the reason and the fix."""


# --- the config ------------------------------------------------------------------------------
def effective_strategy(cfg: Any, world_size: int | None = None) -> str:
    """The strategy a run uses: its `distributed.strategy`, and DDP for a run started by torchrun by hand with
    `strategy: none` (several processes sharing nothing else)."""
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    s = cfg.distributed.strategy
    return "ddp" if s == "none" and world > 1 else s


def config_problems(cfg: Any) -> list[str]:
    """Every problem of `cfg.distributed`, each with its fix (part of `RunConfig.validate`)."""
    d, p = cfg.distributed, []
    world = d.nproc_per_node * d.nnodes
    if d.strategy == "none" and world > 1:
        p.append(f"distributed.strategy is none but nproc_per_node x nnodes = {world} processes: choose how they share "
                 f"the work: ddp (each holds the whole model), fsdp (sharded) or deepspeed.")
    if d.nnodes > 1 and not str(d.master_addr).strip():
        p.append("distributed.master_addr is empty: give the address of machine 0 (node rank 0), which every "
                 "machine can reach.")
    if d.strategy == "deepspeed":
        if d.deepspeed.offload_params and d.deepspeed.zero_stage != 3:
            p.append("distributed.deepspeed.offload_params needs zero_stage 3 (stage 2 keeps the weights whole on "
                     "every GPU): set zero_stage: 3, or offload_params: false.")
        if cfg.peft.method in ("prefix", "prompt", "adalora"):
            p.append(f"peft.method={cfg.peft.method} is not tested with DeepSpeed here: use lora or full, or "
                     f"distributed.strategy: ddp.")
    if d.strategy == "fsdp" and cfg.peft.method not in FSDP_METHODS:
        p.append(f"peft.method={cfg.peft.method} with FSDP: the workbench shards {' and '.join(FSDP_METHODS)} "
                 f"fine-tuning; {cfg.peft.method} trains so few weights that sharding buys nothing. Fix: "
                 f"distributed.strategy: ddp.")
    if d.strategy in ("fsdp", "deepspeed") and cfg.training.adversarial != "none":
        p.append(f"training.adversarial with {d.strategy}: the adversarial push reads the whole embedding matrix, "
                 f"which {d.strategy} shards. Fix: distributed.strategy: ddp, or adversarial: none.")
    if d.strategy == "fsdp" and d.fsdp.auto_wrap is not None and not d.fsdp.auto_wrap:
        p.append("distributed.fsdp.auto_wrap is an empty list: name the layer class (e.g. [LlamaDecoderLayer]), or "
                 "leave it empty (null) for the model's own.")
    return p


def cpu_problem(cfg: Any, cuda: bool | None = None) -> str | None:
    """Why `cfg`'s strategy cannot run on this machine's CPUs (None when it can)."""
    import torch

    cuda = torch.cuda.is_available() and not cfg.training.use_cpu if cuda is None else cuda
    d = cfg.distributed
    if cuda or d.strategy != "deepspeed":
        return None
    return ("distributed.strategy: deepspeed needs a GPU (accelerate starts DeepSpeed only on CUDA devices; on a "
            "CPU it would silently train without ZeRO). Fix: on this machine use distributed.strategy: fsdp (which "
            "shards on CPUs too) or ddp; run DeepSpeed on a GPU machine (`workbench launch-cmd CONFIG` prints the "
            "command), where its configuration is the run's launch/deepspeed.json.")


# --- what the engines read ---------------------------------------------------------------------
def auto_wrap_classes(cfg: Any, model: Any) -> list[str]:
    """The layer classes FSDP wraps one by one: `distributed.fsdp.auto_wrap`, else the model's `_no_split_modules`;
    a class the model does not contain is refused with the ones it does."""
    inner = model
    while hasattr(inner, "base_model") and inner.base_model is not inner:  # a PEFT wrapper
        inner = inner.base_model
    present = {type(m).__name__ for m in model.modules()}
    wanted = cfg.distributed.fsdp.auto_wrap or list(getattr(inner, "_no_split_modules", None) or
                                                     getattr(model, "_no_split_modules", None) or [])
    # Not the embeddings class a BERT declares (BertEmbeddings): accelerate wraps the input embeddings on their own,
    # and sharding them twice fails inside torch (a DTensor's mesh without names).
    wanted = [w for w in wanted if cfg.distributed.fsdp.auto_wrap or (w in present and not w.endswith("Embeddings"))]
    layers = sorted(n for n in present if re.search(r"(Layer|Block)$", n))
    if not wanted:
        raise DistributedError(f"FSDP does not know which layers of this {type(inner).__name__} to wrap (it declares "
                               f"no `_no_split_modules`). Fix: set distributed.fsdp.auto_wrap to its layer class"
                               f"{f', one of {layers}' if layers else ''}.")
    missing = [w for w in wanted if w not in present]
    if missing:
        raise DistributedError(f"distributed.fsdp.auto_wrap names {', '.join(missing)}, which this "
                               f"{type(inner).__name__} does not contain. Fix: use its layer class"
                               f"{f': one of {layers}' if layers else ''}, or leave auto_wrap empty for the model's "
                               f"own.")
    return wanted


def fsdp_config(cfg: Any, model: Any) -> dict[str, Any]:
    """`TrainingArguments.fsdp_config` (FSDP2 through accelerate's plugin)."""
    f = cfg.distributed.fsdp
    return {"version": 2, "transformer_layer_cls_to_wrap": auto_wrap_classes(cfg, model),
            "reshard_after_forward": f.sharding_strategy == "FULL_SHARD", "cpu_offload": f.cpu_offload,
            "state_dict_type": f.state_dict_type, "cpu_ram_efficient_loading": False}


def deepspeed_config(cfg: Any, world_size: int | None = None, bf16: bool | None = None) -> dict[str, Any]:
    """The DeepSpeed configuration of `cfg`, every value resolved (no `auto`): DeepSpeed's own parser reads it as
    it is, and transformers checks it against the run's TrainingArguments."""
    t, ds = cfg.training, cfg.distributed.deepspeed
    world = world_size or cfg.distributed.world_size
    if bf16 is None:
        bf16 = t.bf16 is True or (t.bf16 == "auto" and not t.fp16)
    zero: dict[str, Any] = {"stage": ds.zero_stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": 5e7}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = dict(ZERO_OFFLOAD)
    if ds.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_prefetch_bucket_size=5e7,
                    stage3_param_persistence_threshold=1e5)
        if ds.offload_params:
            zero["offload_param"] = dict(ZERO_OFFLOAD)
    micro = t.per_device_train_batch_size
    return {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "train_batch_size": micro * t.gradient_accumulation_steps * world,
            "gradient_clipping": t.max_grad_norm if t.max_grad_norm > 0 else 0.0,
            "bf16": {"enabled": bool(bf16)}, "fp16": {"enabled": bool(t.fp16 and not bf16)},
            "zero_optimization": zero, "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}


def engine_arguments(cfg: Any, model: Any, run: Any, world_size: int, bf16: bool) -> dict[str, Any]:
    """The `TrainingArguments` fields of the run's strategy ({} for one process or plain DDP)."""
    s = effective_strategy(cfg, world_size)
    if s == "fsdp" and world_size > 1:
        return {"fsdp": True, "fsdp_config": fsdp_config(cfg, model)}
    if s == "deepspeed" and world_size > 1:
        return {"deepspeed": deepspeed_config(cfg, world_size, bf16)}
    if s == "ddp" and world_size > 1:
        return {"ddp_find_unused_parameters": False}
    return {}


def accelerate_config(cfg: Any, auto_wrap: list[str] | None = None) -> dict[str, Any]:
    """The same launch as an `accelerate launch --config_file` file (GPU machines; on CPUs torchrun is the launcher,
    since accelerate's CPU launcher runs FSDP as DDP)."""
    d, t = cfg.distributed, cfg.training
    kind = {"none": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[d.strategy]
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE", "distributed_type": kind, "num_processes": d.world_size,
        "num_machines": d.nnodes, "machine_rank": 0, "main_process_ip": d.master_addr if d.nnodes > 1 else None,
        "main_process_port": d.master_port if d.nnodes > 1 else None, "rdzv_backend": "static",
        "same_network": True, "mixed_precision": "fp16" if t.fp16 else "bf16" if t.bf16 is not False else "no",
        "use_cpu": bool(t.use_cpu), "gpu_ids": "all", "main_training_function": "main", "downcast_bf16": "no",
        "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False,
    }
    if d.strategy == "fsdp":
        f = d.fsdp
        out["fsdp_config"] = {
            "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": ",".join(auto_wrap or f.auto_wrap or []) or None,
            "fsdp_reshard_after_forward": f.sharding_strategy == "FULL_SHARD", "fsdp_offload_params": f.cpu_offload,
            "fsdp_state_dict_type": f.state_dict_type, "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_activation_checkpointing": False}
    if d.strategy == "deepspeed":
        out["deepspeed_config"] = {"deepspeed_config_file": "deepspeed.json", "zero3_init_flag": False}
    return out


# --- the launch ----------------------------------------------------------------------------------
def launcher_argv(cfg: Any, worker_args: list[str], node_rank: int = 0) -> list[str]:
    """`torchrun` for this machine: one process per `nproc_per_node`, each running `worker_args` (a module and its
    arguments). One machine: `--standalone` (a free port of its own, so two runs never collide); several: a static
    rendezvous at machine 0, given up after `rendezvous_timeout` seconds."""
    d = cfg.distributed
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(d.nproc_per_node),
            "--max_restarts", "0"]
    if d.nnodes == 1:
        argv += ["--standalone", "--nnodes", "1"]
    else:
        argv += ["--nnodes", str(d.nnodes), "--node_rank", str(node_rank), "--master_addr", str(d.master_addr),
                 "--master_port", str(d.master_port), "--rdzv_conf", f"timeout={d.rendezvous_timeout}"]
    return argv + ["-m", *worker_args]


def worker_args(run_path: str | Path, resume: bool = False, trust_remote_code: bool = False,
                allow_pickle: bool = False) -> list[str]:
    return (["workbench.worker", str(Path(run_path).resolve()), "--rank-process"] + (["--resume"] if resume else [])
            + (["--trust-remote-code"] if trust_remote_code else []) + (["--allow-pickle"] if allow_pickle else []))


def cluster_command(cfg: Any, config_path: str | Path) -> str:
    """What each machine of a cluster runs (`workbench launch-cmd CONFIG`), with a Slurm example."""
    d = cfg.distributed
    name = cfg.name or "RUN_NAME"
    node_rank = "$NODE_RANK" if d.nnodes > 1 else "0"
    base = ["torchrun", "--nnodes", str(d.nnodes), "--nproc_per_node", str(d.nproc_per_node)]
    if d.nnodes > 1:
        base += ["--node_rank", node_rank, "--master_addr", d.master_addr, "--master_port", str(d.master_port),
                 "--rdzv_conf", f"timeout={d.rendezvous_timeout}"]
    else:
        base += ["--standalone"]
    cmd = base + ["-m", "workbench", "train", str(config_path), "--name", name]
    lines = ["# Every machine runs this (machine 0 first; node ranks 0.." f"{d.nnodes - 1}), with the config and "
             "the runs folder on a filesystem all of them see:",
             " ".join(shlex.quote(c) if not c.startswith("$") else c for c in cmd)]
    if d.nnodes > 1:
        slurm = ["srun", f"--nodes={d.nnodes}", "--ntasks-per-node=1", "bash", "-c",
                 " ".join(shlex.quote(c) for c in cmd[:cmd.index("--node_rank")]) + " --node_rank $SLURM_NODEID "
                 "--master_addr $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1) --master_port "
                 f"{d.master_port} " + " ".join(shlex.quote(c) for c in cmd[cmd.index("--rdzv_conf"):])]
        lines += ["# Under Slurm (one task per machine; machine 0 is the first host of the job):",
                  " ".join(slurm[:5]) + " " + shlex.quote(slurm[5])]
    return "\n".join(lines)


def change_process_count(run: Any, cfg: Any, nproc: int) -> Any:
    """Resume `run` with `nproc` processes per machine: its config.yaml records the new count (atomically) and its
    status says what changed. DDP checkpoints hold the whole model and FSDP's sharded ones are re-split by
    torch.distributed.checkpoint on load; a DeepSpeed ZeRO checkpoint is tied to its process count."""
    from .config import RunConfig

    old = cfg.distributed.nproc_per_node
    if cfg.distributed.strategy == "fsdp" and nproc * cfg.distributed.nnodes < 2:
        raise DistributedError(f"an FSDP run resumes on 2 processes or more: its checkpoint is sharded, and FSDP "
                               f"does not run in one process. Fix: --nproc 2 or more (it ran with {old}).")
    if nproc < 1:
        raise DistributedError(f"--nproc {nproc}: give 1 or more processes.")
    if cfg.distributed.strategy == "deepspeed":
        raise DistributedError(f"a DeepSpeed run resumes with the process count it was written with ({old}): its "
                               f"ZeRO checkpoint is partitioned per process. Fix: resume with --nproc {old}.")
    raw = RunConfig.from_yaml(run.config_file).to_dict()  # as written: never the grants of this command line
    raw["distributed"]["nproc_per_node"] = nproc
    if nproc * cfg.distributed.nnodes > 1 and raw["distributed"]["strategy"] == "none":
        raw["distributed"]["strategy"] = "ddp"
    new = RunConfig.from_dict(raw).check()
    _write_text(run.config_file, new.to_yaml())
    run.update_status(note=f"resumed with {nproc} process(es) per machine (it ran with {old}); the data order after "
                           f"the checkpoint differs from an uninterrupted run's.")
    return new


def write_launch_files(cfg: Any, run: Any, auto_wrap: list[str] | None = None, node_rank: int = 0) -> Path:
    """`launch/` in the run directory: `torchrun.sh` (the exact command, to repeat the launch or resume by hand),
    `accelerate_config.yaml` and, for DeepSpeed, `deepspeed.json`. Written atomically; returns the folder."""
    import yaml

    from .rundir import write_json_atomic

    folder = run.path / "launch"
    folder.mkdir(exist_ok=True)
    cmd = launcher_argv(cfg, worker_args(run.path), node_rank)
    cmd[0] = "python"
    resume = launcher_argv(cfg, worker_args(run.path, resume=True), node_rank)
    resume[0] = "python"
    text = ("#!/usr/bin/env bash\n# The launch of this run, as the workbench ran it (`bash launch/torchrun.sh`); "
            "add --resume after the run folder to continue it from its last checkpoint.\n"
            + " ".join(shlex.quote(c) for c in cmd) + "\n")
    _write_text(folder / "torchrun.sh", text)
    _write_text(folder / "accelerate_config.yaml",
                "# `accelerate launch --config_file launch/accelerate_config.yaml -m workbench.worker RUN "
                "--rank-process` on GPU machines: the same settings as torchrun.sh.\n"
                + yaml.safe_dump(accelerate_config(cfg, auto_wrap), sort_keys=False))
    if cfg.distributed.strategy == "deepspeed":
        write_json_atomic(folder / "deepspeed.json", deepspeed_config(cfg))
    return folder


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- the run's own process on machine 0: the launcher, watched ------------------------------------
_LAUNCH_ERRORS = (
    (re.compile(r"timed out after \d+ms while trying to connect to \(([^)]*)\)|DistNetworkError.*?connect to "
                r"\(([^)]*)\)"),
     "machine 0 ({where}) did not answer within distributed.rendezvous_timeout ({timeout} s): it is not started, "
     "the address or port is wrong, or a firewall blocks it. Fix: start node rank 0 first, check "
     "distributed.master_addr/master_port, then run the command again."),
    (re.compile(r"(EADDRINUSE|address already in use)", re.I),
     "the rendezvous port {port} on this machine is taken by another program (another run's rendezvous?). Fix: "
     "choose another distributed.master_port."),
    (re.compile(r"RendezvousTimeoutError|Timed out after \d+ seconds waiting for clients|Timed out waiting for|"
                r"wait timeout", re.I),
     "not every machine joined within distributed.rendezvous_timeout ({timeout} s): {nnodes} were expected. Fix: "
     "start the same command on every machine (node ranks 0..{last}), or raise the timeout."),
)


def launch_failure(output: str, cfg: Any, rc: int) -> str:
    """A message for a launcher that ended before training could say why (`output`: its last lines)."""
    d = cfg.distributed
    for pattern, message in _LAUNCH_ERRORS:
        m = pattern.search(output)
        if m:
            where = next((g for g in m.groups() if g), f"{d.master_addr}:{d.master_port}") if m.groups() else ""
            return message.format(where=where, timeout=d.rendezvous_timeout, port=d.master_port, nnodes=d.nnodes,
                                  last=d.nnodes - 1)
    sig = re.search(r"exitcode\s*:\s*-(\d+)", output)
    if sig:
        name = signal.Signals(int(sig.group(1))).name if int(sig.group(1)) in signal.valid_signals() else sig.group(1)
        why = " (SIGKILL: usually the system ran out of memory)" if name == "SIGKILL" else ""
        return (f"a training process was killed by {name}{why}. Fix: fewer processes or a smaller batch "
                f"(`workbench estimate` shows the memory per process); the run resumes from its last checkpoint.")
    return f"the launcher (torchrun) exited with code {rc} before training could report; see the run's log."


def supervise(cfg: Any, run: Any, *, node_rank: int = 0, resume: bool = False, trust_remote_code: bool = False,
              allow_pickle: bool = False, log: Any = None) -> int:
    """Run `torchrun` for this machine and wait; returns its exit code.

    SIGTERM/SIGINT here become a graceful stop: the STOP file (every rank checks it) and SIGTERM to rank 0, which
    checkpoints with the others and exits; the launcher is left to end by itself (killing it would cut the
    checkpoint short). When it ends, anything still running in its process group is killed, and on machine 0 a
    run left `queued`/`running` is marked failed with the reason read from the launcher's output.
    """
    argv = launcher_argv(cfg, worker_args(run.path, resume, trust_remote_code, allow_pickle), node_rank)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    if node_rank == 0:  # this process until rank 0 says its own pid: a stop before then still reaches the run
        run.update_status(launcher_pid=proc.pid, pid=os.getpid(), world_size=cfg.distributed.world_size,
                          strategy=cfg.distributed.strategy)
    tail: list[str] = []

    def pump() -> None:
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            if log is not None:
                log.write(line)
                log.flush()
            tail.append(line)
            del tail[:-200]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    asked = {"n": 0}

    def stop(signum: int, frame: Any) -> None:
        asked["n"] += 1
        if asked["n"] == 1:
            request_stop(run, node_rank)
        else:  # asked again (a second Ctrl+C): the launcher ends its processes now, without a checkpoint
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    before = {}
    if threading.current_thread() is threading.main_thread():
        before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in before:
            signal.signal(s, stop)
    try:
        rc = proc.wait()
    finally:
        for s, h in before.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        reader.join(timeout=5)
        _kill_group(proc.pid)
    if rc != 0 and node_rank == 0:
        try:
            st = run.status()
        except WorkbenchError:
            st = {}
        if st.get("state") in ("queued", "running", "stopping"):
            run.update_status(state="failed", phase=None, error=launch_failure("".join(tail), cfg, rc),
                              finished=time.time())
    elif rc != 0:  # another machine: the reason on its own console (machine 0 keeps the run's status)
        why = launch_failure("".join(tail), cfg, rc)
        if why.startswith("the launcher"):  # not a failure we know: show what the launcher said
            sys.stderr.write("".join(tail[-30:]))
        print(f"error: machine {node_rank}: {why}", file=sys.stderr)
    return rc


def request_stop(run: Any, node_rank: int = 0) -> None:
    """A graceful stop of a multi-process run: the STOP file, and SIGTERM to rank 0 (status.json's `pid` once rank 0
    has written it; until then the STOP file alone, which every rank reads at its first step)."""
    if node_rank != 0:
        return  # machine 0 decides; its ranks tell the others at the next step
    run.request_stop()
    try:
        st = run.status()
    except WorkbenchError:
        return
    pid = st.get("pid")
    if pid and pid != st.get("launcher_pid") and pid != os.getpid():
        try:
            os.kill(int(pid), signal.SIGTERM)
        except (ProcessLookupError, PermissionError, ValueError):
            pass


def _kill_group(pgid: int) -> None:
    """Anything the launcher left in its process group (a rank stuck in a collective after another died)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- FSDP on CPUs, and the consolidated model -------------------------------------------------------
def cpu_fsdp(trainer: Any) -> None:
    """Give a CPU run the FSDP plugin accelerate dropped (its FSDP branch is for GPUs only; on CPUs it prepares the
    model with DDP and says nothing). torch's FSDP2 shards over gloo, which is what this switches back on."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    args = trainer.args
    if not args.fsdp or getattr(trainer.accelerator.state, "fsdp_plugin", None) is not None:
        return
    state = trainer.accelerator.state
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    trainer.is_fsdp_enabled = True


def consolidate(trainer: Any, staging: Path, main: bool) -> None:
    """Gather the sharded model (every rank takes part) and, on rank 0, write it as a safetensors model folder
    into `staging`; `publish` then renames it into place, so the run's model folder is either absent or whole."""
    import shutil

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # Gathered to rank 0 and copied out of FSDP's buffers (on a CPU run they are the ones it frees and reuses).
    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state_dict = {k: v.detach().clone() for k, v in full.items()} if main else {}
    del full
    if main:
        shutil.rmtree(staging, ignore_errors=True)
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
    trainer.accelerator.wait_for_everyone()


def publish(staging: Path, folder: Path) -> None:
    """`staging` (fsynced) renamed to `folder`, replacing an older one."""
    import shutil

    from .trainer import _fsync_dir, _fsync_tree

    _fsync_tree(staging)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, folder)
    _fsync_dir(folder.parent)


def read_launch_json(path: Path) -> dict[str, Any]:
    """A run's launch/deepspeed.json (data only)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunError(f"{path} cannot be read ({e}).") from None
