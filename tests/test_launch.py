"""Launching a run on several processes and machines: the options, the launchers found in
the environment (torchrun, accelerate launch, SLURM), and real 2-process runs on CPU."""

import os
import socket
import subprocess
import sys
import time

import pytest
from test_training import _sft_process, _step_losses, base_args, sft, write_chats

from tuneforge.config import SFTConfig
from tuneforge.errors import TuneforgeError
from tuneforge.modeling import read_run_record
from tuneforge.options import build
from tuneforge.registry import get_registry
from tuneforge.training import launch
from tuneforge.training.launch import parse_hostlist, resolve, slurm_port

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("node01", ["node01"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("gpu[8-11],login1", ["gpu8", "gpu9", "gpu10", "gpu11", "login1"]),
        ("a[009-011],b[1,3]", ["a009", "a010", "a011", "b1", "b3"]),
        ("rack[1-2]-n[3-4]", ["rack1-n3", "rack1-n4", "rack2-n3", "rack2-n4"]),
        ("host-1.cluster,host-2.cluster", ["host-1.cluster", "host-2.cluster"]),
    ],
)
def test_slurm_host_lists_expand_in_order(text, hosts):
    assert parse_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["node[01-03", "node]1[", "node[a-c]", "node[5-2]"])
def test_a_malformed_host_list_is_refused(text):
    with pytest.raises(ValueError):
        parse_hostlist(text)


def test_slurm_port_is_stable_per_job_and_in_range():
    assert slurm_port("4242") == slurm_port("4242") != slurm_port("4243")
    assert all(20000 <= slurm_port(job) < 30000 for job in ("0", "1", "99999999", "123_4"))


def config(**values):
    return build(SFTConfig, {"parallel_backend": "ddp", **values})


def backend(name="ddp"):
    return get_registry().get("parallel_backends", name)


def test_one_machine_relaunches_standalone_and_several_through_the_master():
    one = resolve(config(nproc_per_node=4), backend(), environ={})
    assert one.command[-2:] == ["--standalone", "--nproc-per-node=4"] and one.world.processes == 4
    several = resolve(config(nproc_per_node=2, nnodes=3, node_rank=1, master_addr="10.0.0.5", master_port=29600), backend(), environ={})
    assert "--standalone" not in several.command
    assert several.command[-5:] == ["--nproc-per-node=2", "--nnodes=3", "--node-rank=1", "--master-addr=10.0.0.5", "--master-port=29600"]
    assert several.world.describe() == "launcher: tuneforge; world: 6 processes on 3 nodes (2 per node), master 10.0.0.5:29600"
    # one process per node still needs torchrun to join the nodes; the master may come from the environment
    single = resolve(config(nnodes=2, node_rank=0), backend(), environ={"MASTER_ADDR": "head"})
    assert single.command[-5:] == ["--nproc-per-node=1", "--nnodes=2", "--node-rank=0", "--master-addr=head", "--master-port=29500"]
    assert resolve(config(), backend(), environ={}).command is None  # one process: no launcher


@pytest.mark.parametrize(
    "values, environ, message",
    [
        ({"nnodes": 2, "node_rank": 2, "master_addr": "h"}, {}, "--node-rank is 2, outside [0, 2) for --nnodes 2"),
        ({"node_rank": 1}, {}, "--node-rank is 1, outside [0, 1) for --nnodes 1"),
        ({"master_port": 70000}, {}, "--master-port is 70000; give a port from 1 to 65535"),
        ({"nnodes": 0}, {}, "--nnodes is 0; it must be at least 1."),
        ({"nnodes": 2, "node_rank": 1}, {}, "--nnodes 2 needs --master-addr"),
        ({"nnodes": 2, "master_addr": "h"}, {}, "--nnodes 2 needs --node-rank"),
        ({"nproc_per_node": 4}, {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"},
         "--nproc-per-node 4 disagrees with torchrun, which set LOCAL_WORLD_SIZE=2"),
        ({"nnodes": 3}, {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "ACCELERATE_MIXED_PRECISION": "no"},
         "--nnodes 3 disagrees with accelerate launch"),
        ({"nproc_per_node": 2}, {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NODELIST": "n1"},
         "--nproc-per-node 2 disagrees with SLURM, which set 4 task(s) on this node"),
    ],
)
def test_bad_launch_options_are_one_sentence(values, environ, message):
    with pytest.raises(TuneforgeError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as caught:
        resolve(config(**values), backend(), environ=dict(environ))
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")


def test_the_single_backend_refuses_several_processes():
    with pytest.raises(TuneforgeError, match="--parallel-backend single runs one process, but --nproc-per-node 2"):
        resolve(config(parallel_backend="single", nproc_per_node=2), backend("single"), environ={})
    torchrun = {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    with pytest.raises(TuneforgeError, match="runs one process, but torchrun asks for 2"):
        resolve(config(parallel_backend="single"), backend("single"), environ=torchrun)


def test_under_torchrun_the_process_trains_in_place():
    environ = {"LOCAL_RANK": "1", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1", "MASTER_ADDR": "head", "MASTER_PORT": "1234"}
    found = resolve(config(nproc_per_node=2, nnodes=2, node_rank=1), backend(), environ=environ)
    assert found.command is None
    assert found.world == launch.World("torchrun", 4, 2, 2, 3, "head:1234")


def test_slurm_one_task_per_process_sets_the_torch_variables():
    environ = {
        "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "2", "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_STEP_NUM_NODES": "4", "SLURM_STEP_TASKS_PER_NODE": "2(x4)", "SLURM_STEP_NODELIST": "gpu[07-10]",
        "SLURM_JOB_ID": "31337",
    }
    found = resolve(config(), backend(), environ=environ)
    assert found.command is None
    assert found.world.describe() == f"launcher: SLURM, one task per process; world: 8 processes on 4 nodes (2 per node), master gpu07:{slurm_port('31337')}"
    assert {key: environ[key] for key in LAUNCH_VARIABLES} == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "2", "NODE_RANK": "2",
        "MASTER_ADDR": "gpu07", "MASTER_PORT": str(slurm_port("31337")),
    }


def test_slurm_one_task_per_node_launches_the_node_through_torchrun():
    environ = {
        "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NUM_NODES": "2", "SLURM_JOB_NODELIST": "node[3,5]", "SLURM_JOB_ID": "77",
    }
    found = resolve(config(nproc_per_node=4), backend(), environ=environ)
    assert found.command[-5:] == ["--nproc-per-node=4", "--nnodes=2", "--node-rank=1", "--master-addr=node3", f"--master-port={slurm_port('77')}"]
    assert (found.config.nnodes, found.config.node_rank) == (2, 1)  # what the launched processes check again
    assert found.world.launcher == "SLURM, one task per node" and found.world.processes == 8
    assert "RANK" not in environ  # torchrun sets the processes' own
    with pytest.raises(TuneforgeError, match="--node-rank 0 disagrees with SLURM, which set SLURM_NODEID=1"):
        resolve(config(nproc_per_node=4, node_rank=0), backend(), environ=environ)


# --- real processes -------------------------------------------------------------------------------


def _free_slurm_job_id() -> str:
    """A SLURM_JOB_ID whose derived port is free here."""
    for job in range(os.getpid() % 5000, 10000, 7):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", slurm_port(str(job))))
            except OSError:
                continue
        return str(job)
    raise RuntimeError("no free port")


def _clean_env(extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith(("SLURM_", "TORCHELASTIC", "ACCELERATE_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _slurm_tasks(args, n=2):
    """``srun --ntasks n`` on this machine: n processes with what srun sets, and no torchrun."""
    job = _free_slurm_job_id()
    processes = []
    for rank in range(n):
        env = _clean_env({
            "SLURM_JOB_ID": job, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
            "SLURM_STEP_NUM_TASKS": str(n), "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_TASKS_PER_NODE": str(n),
            "SLURM_STEP_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost",
        })
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "tuneforge.cli", "sft", *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        ))
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    return [process.returncode for process in processes], outputs, job


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl", n=8)


def _args(model, data, out):
    return base_args(model, data, out, steps=2) + ["--per-device-batch-size", 1, "--device", "cpu", "--seed", 7, "--parallel-backend", "ddp"]


@pytest.fixture(scope="module")
def torchrun_run(tiny_llama_dir, chats, tmp_path_factory):
    """`torchrun --nproc-per-node 2 -m tuneforge.cli sft ...`: an external launcher, two ranks."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    started = time.time()
    process = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "tuneforge.cli", "sft", *map(str, _args(tiny_llama_dir, chats, out))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_clean_env({}), timeout=300,
    )
    return process, out, time.time() - started


def test_under_an_external_torchrun_each_process_trains_in_place(torchrun_run):
    process, out, _ = torchrun_run
    assert process.returncode == 0, process.stdout
    assert "launching" not in process.stdout  # no second torchrun under the first
    assert process.stdout.count("[tuneforge] launcher: torchrun; world: 2 processes on 1 node (2 per node), master") == 1
    assert process.stdout.count("[tuneforge] finished after 2 steps") == 1  # rank 0 alone logs
    assert read_run_record(out).train_metrics["global_step"] == 2


def test_two_slurm_tasks_train_as_one_run(tiny_llama_dir, chats, torchrun_run, tmp_path):
    out = tmp_path / "slurm"
    codes, (first, second), job = _slurm_tasks(_args(tiny_llama_dir, chats, out))
    assert codes == [0, 0], first + second
    port = slurm_port(job)
    assert f"[tuneforge] launcher: SLURM, one task per process; world: 2 processes on 1 node (2 per node), master localhost:{port}" in first
    assert "[tuneforge]" not in second  # rank 1 logs nothing of its own
    assert "finished after 2 steps" in first
    # one world of two: the same steps, on the same rows, as the torchrun run
    assert _step_losses(out) == pytest.approx(_step_losses(torchrun_run[1]), rel=1e-5)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in torchrun_run[1].iterdir() if not p.name.startswith(".")
    )


def test_a_bad_option_fails_on_every_slurm_task_before_loading(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "bad"
    started = time.time()
    codes, outputs, _ = _slurm_tasks(_args(tiny_llama_dir, chats, out) + ["--nproc-per-node", 3])
    assert all(code not in (0, None) for code in codes)
    sentence = "--nproc-per-node 3 disagrees with SLURM, which set 2 task(s) on this node (SLURM_STEP_TASKS_PER_NODE)"
    for text in outputs:
        assert sentence in text and "Traceback" not in text and "loading" not in text, text
    assert not out.exists()
    assert time.time() - started < 60


def test_a_bad_multi_node_option_fails_before_anything_starts(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "bad"
    result = sft(*_args(tiny_llama_dir, chats, out), "--nproc-per-node", 2, "--nnodes", 2, "--node-rank", 2, "--master-addr", "h", expect_ok=False)
    assert result.exit_code == 1
    assert "--node-rank is 2, outside [0, 2) for --nnodes 2; number the nodes from 0" in result.output
    assert not out.exists()


def test_fsdp_on_one_process_is_refused_before_anything_loads(tiny_llama_dir, chats, tmp_path):
    """accelerate refuses FSDP in one process, after the weights load and with a traceback: refused first."""
    out = tmp_path / "one"
    result = sft(*_args(tiny_llama_dir, chats, out), "--parallel-backend", "fsdp", expect_ok=False)
    assert result.exit_code == 1
    assert ("--parallel-backend fsdp needs at least 2 processes and this run has 1; pass --nproc-per-node 2 (or more), "
            "or use --parallel-backend single.") in " ".join(result.output.split()), result.output
    assert not out.exists()


def test_a_failed_process_under_tuneforges_torchrun_leaves_no_traceback(tiny_llama_dir, tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n' * 4)  # no assistant turn to learn
    process = _sft_process(_args(tiny_llama_dir, data, tmp_path / "out") + ["--nproc-per-node", 2], env_extra={})
    text, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    # Each rank says why in the same sentence (torchrun may stop the slower rank before it does).
    errors = {line for line in text.splitlines() if line.startswith("Error: ") and "process run failed" not in line}
    assert len(errors) == 1 and "broken.jsonl" in errors.pop(), text
    assert "Traceback" not in text and "ChildFailedError" not in text, text
    assert "exited with code 1" in text
