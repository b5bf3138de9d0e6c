"""Where this process stands in a run of several processes, and how they are started.

A run spreads over processes in one of three ways, found from the environment:

- an external launcher that starts one process per device (``torchrun``,
  ``accelerate launch``: RANK, WORLD_SIZE, LOCAL_RANK, ...): this process trains
  in place, it never starts others;
- SLURM, ``srun`` with one task per process (SLURM_PROCID, SLURM_STEP_NUM_TASKS,
  ...): the SLURM variables become torch.distributed's (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and this process trains in place; or
  ``srun`` with one task per node running tuneforge with ``--nproc-per-node``:
  the nodes, this node's rank and the master come from SLURM, and tuneforge
  starts the node's processes through torchrun;
- nothing: ``--nproc-per-node``, ``--nnodes``, ``--node-rank``, ``--master-addr``
  and ``--master-port`` say what to start through torchrun.

``resolve`` checks the options against the environment (a sentence for each
mismatch, before anything loads) and says which of these applies.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from dataclasses import dataclass
from typing import MutableMapping

from tuneforge.errors import TuneforgeError

DEFAULT_PORT = 29500  # torchrun's
SLURM_PORTS = (20000, 30000)  # a job's default port lies in this range, below Linux's ephemeral ports


@dataclass(frozen=True)
class World:
    """The processes of a run, as this process sees them."""

    launcher: str  # what started the processes, in words
    processes: int
    nnodes: int
    per_node: int
    rank: int = 0
    master: str | None = None  # "ADDRESS:PORT" where the processes meet

    def describe(self) -> str:
        nodes = f"{self.nnodes} node{'s' if self.nnodes != 1 else ''}"
        where = f", master {self.master}" if self.master else ""
        return f"launcher: {self.launcher}; world: {self.processes} processes on {nodes} ({self.per_node} per node){where}"


@dataclass(frozen=True)
class Launch:
    """What ``resolve`` decided: the world, and the command that starts this node's processes (None: train here)."""

    config: object  # the options, with the node layout a launcher gave filled in
    world: World
    command: list[str] | None = None


# --- SLURM host lists -------------------------------------------------------------------------


def _split_top(text: str) -> list[str]:
    """Split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in host list '{text}'")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in host list '{text}'")
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _expand_range(item: str, text: str) -> list[str]:
    """``01-03`` -> 01, 02, 03 (the width of the first bound kept); ``7`` -> 7."""
    low, sep, high = item.partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise ValueError(f"'{item}' in host list '{text}' is not a number or a range of numbers")
    if not sep:
        return [low]
    if int(high) < int(low):
        raise ValueError(f"the range '{item}' in host list '{text}' runs backwards")
    return [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]


def _expand_host(pattern: str, text: str) -> list[str]:
    match = re.search(r"\[([^\[\]]*)\]", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    values = [value for item in match.group(1).split(",") for value in _expand_range(item.strip(), text)]
    # Later bracket groups (rack[1-2]-node[1-4]) expand for each value of the first.
    return [host for value in values for host in _expand_host(head + value + tail, text)]


def parse_hostlist(text: str) -> list[str]:
    """The hosts of a SLURM host list, in order: ``node[01-03,07],gpu5`` -> node01, node02, node03, node07, gpu5."""
    return [host for part in _split_top(text) for host in _expand_host(part, text)]


def slurm_port(job_id: str) -> int:
    """The port a SLURM job's processes meet on: the same on every node of the job, different between most jobs."""
    number = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    low, high = SLURM_PORTS
    return low + number % (high - low)


# --- checks -------------------------------------------------------------------------------------


def check_options(config) -> None:
    """The launch options alone: numbers in range (before the environment is looked at)."""
    if config.nnodes < 1:
        raise TuneforgeError(f"--nnodes is {config.nnodes}; it must be at least 1.")
    if config.node_rank is not None and not 0 <= config.node_rank < config.nnodes:
        raise TuneforgeError(
            f"--node-rank is {config.node_rank}, outside [0, {config.nnodes}) for --nnodes {config.nnodes}; "
            f"number the nodes from 0 (the node at --master-addr) to {config.nnodes - 1}."
        )
    if config.master_port is not None and not 1 <= config.master_port <= 65535:
        raise TuneforgeError(f"--master-port is {config.master_port}; give a port from 1 to 65535 that is free on the master node.")


def _int(environ, name: str, default: int | None = None) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise TuneforgeError(f"The environment variable {name} is '{value}', not a number; the launcher that set it is misconfigured.") from None


def _agree(flag: str, given, found, source: str, launcher: str) -> None:
    if given is not None and given != found:
        raise TuneforgeError(
            f"{flag} {given} disagrees with {launcher}, which set {source}; the launcher's layout is the one used, "
            f"so leave {flag} out or make it agree."
        )


def _need_spreading_backend(backend, processes: int, launcher: str) -> None:
    if processes > 1 and backend.launch_command(processes) is None:
        raise TuneforgeError(
            f"--parallel-backend {backend.name} runs one process, but {launcher} asks for {processes}; "
            f"pass --parallel-backend ddp or fsdp (or another that spreads over processes)."
        )


# --- the environment ----------------------------------------------------------------------------


def _external_launcher(environ) -> str:
    if any(key.startswith("ACCELERATE_") for key in environ):
        return "accelerate launch"
    return "torchrun"


def _in_place(config, backend, environ) -> Launch:
    """Under a launcher that started one process per device: check the options against it."""
    launcher = _external_launcher(environ)
    processes = _int(environ, "WORLD_SIZE", 1)
    per_node = _int(environ, "LOCAL_WORLD_SIZE", processes)
    nnodes = max(processes // max(per_node, 1), 1)
    node_rank = _int(environ, "GROUP_RANK", _int(environ, "RANK", 0) // max(per_node, 1))
    if config.nproc_per_node > 1:  # 1 is the default: only a count that was given can disagree
        _agree("--nproc-per-node", config.nproc_per_node, per_node, f"LOCAL_WORLD_SIZE={per_node}", launcher)
    if config.nnodes > 1:
        _agree("--nnodes", config.nnodes, nnodes, f"{nnodes} node(s) of {per_node} processes (WORLD_SIZE={processes})", launcher)
    _agree("--node-rank", config.node_rank, node_rank, f"GROUP_RANK={node_rank}", launcher)
    _need_spreading_backend(backend, processes, launcher)
    master = f"{environ['MASTER_ADDR']}:{environ.get('MASTER_PORT', DEFAULT_PORT)}" if environ.get("MASTER_ADDR") else None
    world = World(launcher, processes, nnodes, per_node, _int(environ, "RANK", 0), master)
    return Launch(config, world)


def _tasks_per_node(environ, node: int, tasks: int, nodes: int) -> int:
    """This node's task count from SLURM_STEP_TASKS_PER_NODE (``2(x3),1``: 2 on each of 3 nodes, then 1)."""
    text = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    counts: list[int] = []
    for item in (text or "").split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if match is None:
            counts = []
            break
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if node < len(counts):
        return counts[node]
    return max(tasks // max(nodes, 1), 1)


def _slurm_master(config, environ) -> tuple[str, int]:
    hosts_text = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    address = config.master_addr or environ.get("MASTER_ADDR")
    if not address:
        if not hosts_text:
            raise TuneforgeError(
                "SLURM gave no node list (SLURM_STEP_NODELIST or SLURM_JOB_NODELIST) to find the master node in; "
                "pass --master-addr with the first node's address."
            )
        try:
            address = parse_hostlist(hosts_text)[0]
        except (ValueError, IndexError) as exc:
            raise TuneforgeError(f"The SLURM node list '{hosts_text}' cannot be read ({exc}); pass --master-addr with the first node's address.") from None
    port = config.master_port or _int(environ, "MASTER_PORT") or slurm_port(environ.get("SLURM_JOB_ID", "0"))
    return address, port


def _slurm(config, backend, environ: MutableMapping[str, str]) -> Launch | None:
    """Under ``srun``: one task per process (set torch.distributed's variables), or one per node (launch here)."""
    tasks = _int(environ, "SLURM_STEP_NUM_TASKS")
    nodes = _int(environ, "SLURM_STEP_NUM_NODES", _int(environ, "SLURM_NNODES", 1))
    node = _int(environ, "SLURM_NODEID", 0)
    if tasks == nodes and (config.nproc_per_node > 1 or tasks == 1):
        # One task per node: start this node's --nproc-per-node processes, the nodes met at SLURM's first host.
        _agree("--nnodes", config.nnodes if config.nnodes > 1 else None, nodes, f"SLURM_STEP_NUM_NODES={nodes}", "SLURM")
        _agree("--node-rank", config.node_rank, node, f"SLURM_NODEID={node}", "SLURM")
        if nodes == 1:
            return None  # one machine: the options alone say what to start
        address, port = _slurm_master(config, environ)
        config = dataclasses.replace(config, nnodes=nodes, node_rank=node, master_addr=address, master_port=port)
        return _own_launch(config, backend, environ, launcher="SLURM, one task per node")
    per_node = _tasks_per_node(environ, node, tasks, nodes)
    if config.nproc_per_node > 1:
        _agree("--nproc-per-node", config.nproc_per_node, per_node, f"{per_node} task(s) on this node (SLURM_STEP_TASKS_PER_NODE)", "SLURM")
    if config.nnodes > 1:
        _agree("--nnodes", config.nnodes, nodes, f"SLURM_STEP_NUM_NODES={nodes}", "SLURM")
    _agree("--node-rank", config.node_rank, node, f"SLURM_NODEID={node}", "SLURM")
    launcher = "SLURM, one task per process"
    _need_spreading_backend(backend, tasks, launcher)
    address, port = _slurm_master(config, environ)
    rank = _int(environ, "SLURM_PROCID", 0)
    environ.update(
        RANK=str(rank), WORLD_SIZE=str(tasks), LOCAL_RANK=str(_int(environ, "SLURM_LOCALID", 0)),
        LOCAL_WORLD_SIZE=str(per_node), GROUP_RANK=str(node), NODE_RANK=str(node),
        MASTER_ADDR=address, MASTER_PORT=str(port),
    )
    return Launch(config, World(launcher, tasks, nodes, per_node, rank, f"{address}:{port}"))


def torchrun_command(prefix: list[str], config) -> list[str]:
    """The backend's launcher prefix (torchrun's flags) with this run's node layout.

    One machine without a port keeps the prefix as it is (``--standalone`` for the
    built-in backends); otherwise ``--standalone`` gives way to torchrun's static
    rendezvous: every node's processes meet at ``--master-addr:--master-port``.
    """
    if config.nnodes == 1 and config.master_port is None:
        return list(prefix)
    nodes = [
        f"--nnodes={config.nnodes}",
        f"--node-rank={config.node_rank or 0}",
        f"--master-addr={config.master_addr or '127.0.0.1'}",
        f"--master-port={config.master_port or DEFAULT_PORT}",
    ]
    return [part for part in prefix if part != "--standalone"] + nodes


def _own_launch(config, backend, environ, launcher: str = "tuneforge") -> Launch:
    """No launcher around: the options say how many processes to start, on how many nodes."""
    processes = config.nproc_per_node * config.nnodes
    if config.nnodes > 1:
        if config.node_rank is None:
            raise TuneforgeError(
                f"--nnodes {config.nnodes} needs --node-rank, this machine's place among the nodes "
                f"(0 on the node at --master-addr, 1 to {config.nnodes - 1} on the others)."
            )
        address = config.master_addr or environ.get("MASTER_ADDR")
        if not address:
            raise TuneforgeError(
                f"--nnodes {config.nnodes} needs --master-addr, the address of the node with --node-rank 0 "
                f"that every node can reach (or MASTER_ADDR in the environment)."
            )
        port = config.master_port or _int(environ, "MASTER_PORT") or DEFAULT_PORT
        config = dataclasses.replace(config, master_addr=address, master_port=port)
    if processes == 1:
        return Launch(config, World("none", 1, 1, 1))
    _need_spreading_backend(backend, processes, f"--nproc-per-node {config.nproc_per_node} x --nnodes {config.nnodes}")
    command = torchrun_command(backend.launch_command(config.nproc_per_node), config)
    master = f"{config.master_addr}:{config.master_port}" if config.nnodes > 1 else None
    world = World(launcher, processes, config.nnodes, config.nproc_per_node, (config.node_rank or 0) * config.nproc_per_node, master)
    return Launch(config, world, command)


def resolve(config, backend, environ: MutableMapping[str, str] | None = None) -> Launch:
    """Check the launch options against the environment and decide how this process runs.

    Under SLURM with one task per process, torch.distributed's variables are set in
    ``environ`` (``os.environ`` by default), so everything after reads one layout.
    """
    environ = os.environ if environ is None else environ
    check_options(config)
    if "LOCAL_RANK" in environ:
        return _in_place(config, backend, environ)
    if environ.get("SLURM_PROCID") is not None and environ.get("SLURM_STEP_NUM_TASKS"):
        found = _slurm(config, backend, environ)
        if found is not None:
            return found
    return _own_launch(config, backend, environ)
