"""Distributed runs on this CPU machine (gloo): DDP and FSDP with 2 processes, 2 "machines" meeting on 127.0.0.1,
stop and resume (with another process count), the consolidated model, the launch files and their engines' parsers,
and the messages a new user meets (DeepSpeed without a GPU, a rendezvous nobody answers, an unknown FSDP layer
class, a stop during the consolidation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import free_port, make_sentiment_frame
from workbench.config import RunConfig
from workbench.distributed import (accelerate_config, cluster_command, config_problems, deepspeed_config,
                                   launcher_argv, worker_args)
from workbench.errors import ConfigError
from workbench.rundir import RunDir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def write_config(tmp_path: Path, model: Path, name: str, *, distributed: dict | None = None, **training) -> Path:
    data = tmp_path / "sentiment.csv"
    if not data.exists():
        make_sentiment_frame(200).to_csv(data, index=False)
    t = {"num_train_epochs": 2, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "logging_steps": 2,
         "save_total_limit": 2, "bf16": False, "report_to": [], **training}
    raw = {"name": name, "output_dir": str(tmp_path / "runs"), "model": {"name_or_path": str(model), "dropout": 0.0},
           "data": {"source": str(data), "max_length": 64}, "training": t, "peft": {"freeze_embeddings": False},
           "distributed": distributed or {}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def workbench(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def train_losses(run: RunDir) -> list[float]:
    return run.metrics().query("kind == 'train'")["loss"].tolist()


def no_processes_left(run_path: Path) -> bool:
    out = subprocess.run(["pgrep", "-f", f"workbench.worker {run_path}"], capture_output=True, text=True).stdout
    return not out.strip()


# --- the config and what the engines read ----------------------------------------------------------
def test_config_problems_name_the_fix():
    def problems(**d):
        return config_problems(RunConfig.from_dict({"distributed": d}))

    assert any("choose how they share" in p for p in problems(nproc_per_node=2))
    assert any("zero_stage: 3" in p for p in problems(strategy="deepspeed", deepspeed={"offload_params": True}))
    assert problems(strategy="fsdp", nproc_per_node=2) == []
    cfg = RunConfig.from_dict({"peft": {"method": "prompt"}, "distributed": {"strategy": "fsdp", "nproc_per_node": 2}})
    assert any("ddp" in p for p in config_problems(cfg))
    with pytest.raises(ConfigError, match="zero_stage"):
        RunConfig.from_dict({"distributed": {"strategy": "deepspeed", "deepspeed": {"zero_stage": 1}}}).check()
    with pytest.raises(ConfigError, match="strategy"):
        RunConfig.from_dict({"distributed": {"strategy": "horovod"}})


def test_launcher_commands_for_one_and_several_machines(tmp_path):
    one = RunConfig.from_dict({"distributed": {"strategy": "ddp", "nproc_per_node": 4}})
    argv = launcher_argv(one, worker_args(tmp_path))
    assert argv[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in argv
    assert argv[argv.index("--nproc_per_node") + 1] == "4" and argv[-3:] == ["workbench.worker", str(tmp_path),
                                                                             "--rank-process"][-3:]
    many = RunConfig.from_dict({"name": "big", "distributed": {"strategy": "fsdp", "nproc_per_node": 8, "nnodes": 4,
                                                               "master_addr": "10.0.0.1", "rendezvous_timeout": 60}})
    argv = launcher_argv(many, worker_args(tmp_path), node_rank=3)
    assert "--standalone" not in argv and argv[argv.index("--node_rank") + 1] == "3"
    assert argv[argv.index("--rdzv_conf") + 1] == "timeout=60"
    text = cluster_command(many, "c.yaml")
    assert "--node_rank $NODE_RANK" in text and "srun --nodes=4" in text and "$SLURM_NODEID" in text
    assert "-m workbench train c.yaml --name big" in text


def test_accelerate_config_is_read_by_accelerate(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    for strategy in ("ddp", "fsdp", "deepspeed"):
        cfg = RunConfig.from_dict({"distributed": {"strategy": strategy, "nproc_per_node": 2}})
        f = tmp_path / f"{strategy}.yaml"
        f.write_text(yaml.safe_dump(accelerate_config(cfg, ["LlamaDecoderLayer"])))
        loaded = ClusterConfig.from_yaml_file(f)
        assert loaded.num_processes == 2 and str(loaded.distributed_type).endswith(
            {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[strategy])


DEEPSPEED_DIR = Path(__file__).resolve().parent.parent / "build" / "deepspeed"  # .ci/run installs it there
PARSE = """
import json, sys
import deepspeed.comm as dist
from deepspeed.runtime.config import DeepSpeedConfig
class DataParallel:  # DeepSpeed's parser asks its "mpu" for the data-parallel size: the run's processes
    def get_data_parallel_world_size(self):
        return WORLD
dist.get_rank = lambda *a, **k: 0  # as rank 0 of a process group that is not started
out = []
for case in json.load(sys.stdin):
    WORLD = case["world"]
    try:
        c = DeepSpeedConfig(case["config"], mpu=DataParallel())
        out.append({"stage": c.zero_optimization_stage, "train_batch_size": c.train_batch_size,
                    "micro": c.train_micro_batch_size_per_gpu, "accumulation": c.gradient_accumulation_steps,
                    "offload_optimizer": bool(c.zero_config.offload_optimizer),
                    "offload_param": bool(c.zero_config.offload_param), "bf16": c.bfloat16_config.enabled})
    except Exception as e:
        out.append({"refused": f"{type(e).__name__}: {e}"})
print(json.dumps(out))
"""


def test_deepspeed_config_is_accepted_by_deepspeeds_parser():
    """DeepSpeed's own `DeepSpeedConfig` reads every configuration the workbench writes (stage 2 and 3, each offload),
    and refuses a wrong one. DeepSpeed lives in build/deepspeed, outside the environment (see .ci/run), so it runs
    in a subprocess."""
    path = os.pathsep.join(filter(None, [str(DEEPSPEED_DIR) if DEEPSPEED_DIR.is_dir() else None,
                                         os.environ.get("PYTHONPATH")]))
    env = {**ENV, "PYTHONPATH": path}
    if subprocess.run([sys.executable, "-c", "import deepspeed"], env=env, capture_output=True).returncode:
        pytest.skip("deepspeed is not installed (.ci/run puts it in build/deepspeed)")
    zeros = [{"zero_stage": 2}, {"zero_stage": 2, "offload_optimizer": True}, {"zero_stage": 3},
             {"zero_stage": 3, "offload_params": True, "offload_optimizer": True}]
    cases = []
    for zero in zeros:
        cfg = RunConfig.from_dict({"training": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                                                "bf16": True},
                                   "distributed": {"strategy": "deepspeed", "nproc_per_node": 2, "deepspeed": zero}})
        cases.append({"world": 2, "config": deepspeed_config(cfg)})
    cases.append({"world": 2, "config": {**cases[0]["config"], "train_batch_size": 15}})  # the parser really checks
    p = subprocess.run([sys.executable, "-c", PARSE], input=json.dumps(cases), env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    parsed = json.loads(p.stdout.strip().splitlines()[-1])
    for zero, got in zip(zeros, parsed):
        assert got == {"stage": zero["zero_stage"], "train_batch_size": 16, "micro": 4, "accumulation": 2,
                       "offload_optimizer": zero.get("offload_optimizer", False),
                       "offload_param": zero.get("offload_params", False), "bf16": True}, got
    assert "refused" in parsed[-1] and "batch" in parsed[-1]["refused"]


# --- runs on 2 processes -----------------------------------------------------------------------------
def test_ddp_and_fsdp_match_one_process_with_the_same_global_batch(tiny_llama, tmp_path):
    """Global batch 16 three ways: 1 process x 16, DDP 2 x 8, FSDP 2 x 8. FSDP and DDP do the same arithmetic (to
    float rounding); against one process the batches hold other examples (each rank samples its own shard), so the
    final losses agree within a stated tolerance: 10% on the last epoch's mean training loss."""
    one = workbench("train", str(write_config(tmp_path, tiny_llama, "one", per_device_train_batch_size=16)))
    assert one.returncode == 0, one.stderr[-2000:]
    runs = {}
    for strategy in ("ddp", "fsdp"):
        p = workbench("train", str(write_config(tmp_path, tiny_llama, strategy, distributed={"strategy": strategy})),
                      "--nproc", "2")
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert "Traceback" not in p.stdout + p.stderr
        runs[strategy] = RunDir(tmp_path / "runs" / strategy)
    assert sorted(x.name for x in (tmp_path / "runs").iterdir()) == ["ddp", "fsdp", "one"]  # one directory each
    base = RunDir(tmp_path / "runs" / "one")
    for strategy, run in runs.items():
        st = run.status()
        assert st["state"] == "completed" and st["world_size"] == 2 and st["strategy"] == strategy
        assert st["total_steps"] == base.status()["total_steps"] == 18  # 140 rows / 16 per step, 2 epochs
        assert len(st["peak_memory_per_rank"]) == 2
        assert (run.path / "launch" / "torchrun.sh").is_file() and (run.path / "launch" /
                                                                     "accelerate_config.yaml").is_file()
    assert train_losses(runs["fsdp"]) == pytest.approx(train_losses(runs["ddp"]), rel=1e-3)
    last = [sum(train_losses(r)[-4:]) / 4 for r in (base, runs["ddp"], runs["fsdp"])]
    print(f"mean of the last 4 logged training losses: one process {last[0]:.4f}, ddp {last[1]:.4f}, "
          f"fsdp {last[2]:.4f}")
    assert last[1] == pytest.approx(last[0], rel=0.10) and last[2] == pytest.approx(last[0], rel=0.10)
    # FSDP: sharded checkpoints (one shard file per rank), consolidated into a normal model folder at the end
    ckpt = runs["fsdp"].latest_checkpoint()
    assert sorted(p.name for p in (ckpt / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp",
                                                                                       "__1_0.distcp"]
    model = runs["fsdp"].model_dir
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    assert not list(runs["fsdp"].path.glob(".model*"))  # no staging left behind
    from workbench.predict import Predictor
    pred = Predictor.from_run(runs["fsdp"].path)
    assert pred.predict(["a wonderful film"])["predicted"][0] in ("neg", "pos")
    assert runs["fsdp"].evaluation()["after"]["n"] == 40


def test_fsdp_stops_gracefully_and_resumes_on_three_processes(tiny_llama, tmp_path, monkeypatch):
    from workbench.config import load_config
    from workbench.launch import launch

    path = write_config(tmp_path, tiny_llama, "fs", distributed={"strategy": "fsdp", "nproc_per_node": 2},
                        max_steps=40, save_strategy="steps", save_steps=4, eval_strategy="no",
                        per_device_train_batch_size=4)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    h = launch(load_config(path))
    deadline = time.monotonic() + 300
    while (h.status().get("step") or 0) < 6 and h.is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    st = h.stop(timeout=180)
    assert st["state"] == "stopped", st
    assert 6 <= st["step"] < 40 and st["checkpoint"] == f"checkpoint-{st['step']}"
    assert no_processes_left(h.path)
    stopped_at = st["step"]
    p = workbench("resume", str(h.path), "--nproc", "3")  # torch.distributed.checkpoint re-splits the shards
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    st = h.run.status()
    assert st["state"] == "completed" and st["world_size"] == 3 and st["step"] == 40
    assert "resumed with 3 process(es)" in st.get("note", "")
    assert h.run.config().distributed.nproc_per_node == 3
    steps = h.run.metrics().query("kind == 'train'")["step"].tolist()
    # one row per logged step (every 2), none missing around the stop at step {stopped_at}, none twice
    assert steps == sorted(set(steps)) and set(range(2, 41, 2)) <= set(steps) and steps[-1] == 40, (stopped_at, steps)
    assert (h.run.model_dir / "model.safetensors").is_file()


def test_two_machines_meet_on_localhost_stop_and_resume(tiny_llama, tmp_path):
    """Two launchers, one process each, meeting at 127.0.0.1 (a static rendezvous): one run directory; a stop asked
    of machine 0 reaches the other; both resume it."""
    port = free_port()
    path = write_config(tmp_path, tiny_llama, "two", distributed={"strategy": "ddp", "nnodes": 2,
                                                                  "master_port": port, "rendezvous_timeout": 120},
                        max_steps=80, save_strategy="steps", save_steps=4, eval_strategy="no",
                        per_device_train_batch_size=4)

    def machine(rank: int, *args: str) -> subprocess.Popen:
        cmd = args or ("train", str(path), "--node-rank", str(rank))
        return subprocess.Popen([sys.executable, "-m", "workbench", *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=ENV)

    m0, m1 = machine(0), machine(1)
    run = RunDir(tmp_path / "runs" / "two")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and m0.poll() is None:
        if run.status_file.exists() and (run.status().get("step") or 0) >= 6:
            break
        time.sleep(0.2)
    from workbench.launch import attach
    attach(run.path).stop(wait=False)  # what `workbench stop` does, without its start-up time on a busy machine
    out0, out1 = m0.communicate(timeout=180)[0], m1.communicate(timeout=180)[0]
    st = run.status()
    assert st["state"] == "stopped" and st["world_size"] == 2, (st, out0[-1500:], out1[-1500:])
    assert m1.returncode == 0, out1[-2000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["two"]
    r0 = machine(0, "resume", str(run.path))
    r1 = machine(1, "resume", str(run.path), "--node-rank", "1")
    out0, out1 = r0.communicate(timeout=300)[0], r1.communicate(timeout=300)[0]
    assert r0.returncode == 0 and r1.returncode == 0, out0[-2000:] + out1[-2000:]
    st = run.status()
    assert st["state"] == "completed" and st["step"] == 80 and st["world_size"] == 2
    assert no_processes_left(run.path)


# --- what a new user meets -------------------------------------------------------------------------
def test_deepspeed_without_a_gpu_is_refused_before_anything_starts(tiny_llama, tmp_path):
    path = write_config(tmp_path, tiny_llama, "ds", distributed={"strategy": "deepspeed"})
    p = workbench("train", str(path), "--nproc", "2")
    assert p.returncode == 2 and "needs a GPU" in p.stderr and "Traceback" not in p.stderr, p.stderr[-1500:]
    assert not (tmp_path / "runs" / "ds").exists()


def test_a_rendezvous_nobody_answers_says_so_and_leaves_nothing_running(tiny_llama, tmp_path):
    port = free_port()
    path = write_config(tmp_path, tiny_llama, "lonely", distributed={"strategy": "ddp", "nnodes": 2,
                                                                     "master_port": port, "rendezvous_timeout": 3})
    p = workbench("train", str(path), "--node-rank", "1")  # machine 0 never starts
    assert p.returncode == 2 and "did not answer" in p.stderr and f"127.0.0.1, {port}" in p.stderr, p.stderr[-1500:]
    p = workbench("train", str(path))  # machine 0 alone: the other never joins
    assert p.returncode == 2 and "not every machine joined" in p.stderr, p.stdout[-1500:] + p.stderr[-1500:]
    run = RunDir(tmp_path / "runs" / "lonely")
    assert run.status()["state"] == "failed" and "not every machine joined" in run.status()["error"]
    assert no_processes_left(run.path)


def test_fsdp_with_a_layer_class_the_model_lacks_names_the_right_one(tiny_llama, tmp_path):
    path = write_config(tmp_path, tiny_llama, "wrap", distributed={"strategy": "fsdp",
                                                                   "fsdp": {"auto_wrap": ["BertLayer"]}})
    p = workbench("train", str(path), "--nproc", "2")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "BertLayer" in p.stderr and "LlamaDecoderLayer" in p.stderr, p.stderr[-1500:]
    run = RunDir(tmp_path / "runs" / "wrap")
    assert run.status()["state"] == "failed" and not run.model_dir.exists()
    assert no_processes_left(run.path)


def test_a_stop_during_the_consolidation_waits_for_a_whole_model(tiny_llama, tmp_path, monkeypatch):
    """The consolidation is slowed down (a sitecustomize in the ranks' path wraps it with a 4 s sleep) so the stop
    arrives in the middle of it: the model is finished whole, and the run says what happened."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import time\nimport workbench.distributed as d\n_c = d.consolidate\n"
        "def slow(*a, **k):\n    time.sleep(4)\n    return _c(*a, **k)\nd.consolidate = slow\n")
    path = write_config(tmp_path, tiny_llama, "cons", distributed={"strategy": "fsdp", "nproc_per_node": 2},
                        max_steps=6, eval_strategy="no", save_strategy="no")
    from workbench.config import load_config
    from workbench.launch import launch

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    h = launch(load_config(path))
    deadline = time.monotonic() + 300
    while "consolidating" not in (h.status().get("phase") or "") and h.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "consolidating" in (h.status().get("phase") or ""), h.status()
    st = h.stop(timeout=180)
    assert st["state"] == "completed", st
    assert "consolidation finished first" in st.get("note", "")
    assert (h.run.model_dir / "model.safetensors").is_file() and not list(h.path.glob(".model*"))
    assert no_processes_left(h.path)
    from safetensors.torch import load_file
    assert load_file(h.run.model_dir / "model.safetensors")  # whole and readable


def test_launch_cmd_prints_the_cluster_command(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"distributed": {"strategy": "deepspeed", "nnodes": 2, "nproc_per_node": 8,
                                                    "master_addr": "head", "deepspeed": {"zero_stage": 3}}}))
    p = workbench("launch-cmd", str(path), "--name", "big")
    assert p.returncode == 0, p.stderr
    assert "torchrun --nnodes 2 --nproc_per_node 8" in p.stdout and "srun --nodes=2" in p.stdout
    assert "distributed_type: DEEPSPEED" in p.stdout
    ds = json.loads(p.stdout.split("# launch/deepspeed.json:\n", 1)[1])
    assert ds["zero_optimization"]["stage"] == 3 and ds["train_batch_size"] == 16 * 16


def test_a_sharded_checkpoint_is_vetted_before_torch_reads_it(tmp_path, monkeypatch):
    """torch.distributed.checkpoint unpickles `.metadata` and every non-tensor item: the workbench reads them first
    through an allowlist / `weights_only`, so a shared run directory cannot run code through a checkpoint."""
    import pickle

    import torch
    import torch.distributed.checkpoint as dcp

    from workbench.checkpoints import dcp_problems

    folder = tmp_path / "pytorch_model_fsdp_0"
    dcp.save({"w": torch.ones(3), "lr": 0.1, "betas": (0.9, 0.999)}, checkpoint_id=folder, no_dist=True)
    assert dcp_problems(folder) == []
    shard = next(folder.glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert any("cut short" in p for p in dcp_problems(folder))
    shard.write_bytes(data)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    (folder / ".metadata").write_bytes(pickle.dumps(Evil()))
    problems = dcp_problems(folder)
    assert problems and "refused" in problems[0] and "system" in problems[0], problems
    assert not (tmp_path / "PWNED").exists()
    # protocol 4 resolves a dotted name through a module's attributes: an allowed module's `os.system`
    module, name, cmd = (x.encode() for x in ("torch.distributed.checkpoint.metadata", "os.system",
                                              f"touch {tmp_path / 'PWNED'}"))
    dotted = (b"\x80\x04\x8c" + bytes([len(module)]) + module + b"\x8c" + bytes([len(name)]) + name + b"\x93\x8c"
              + bytes([len(cmd)]) + cmd + b"\x85R.")
    (folder / ".metadata").write_bytes(dotted)
    problems = dcp_problems(folder)
    assert problems and "refused" in problems[0], problems
    assert not (tmp_path / "PWNED").exists()
