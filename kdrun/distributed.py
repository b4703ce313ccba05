"""Several processes, one run: PyTorch's own DistributedDataParallel, started by torchrun or SLURM.

`torchrun --nproc_per_node=8 -m kdrun ...`, `srun python -m kdrun ...` or Hydra's submitit_slurm launcher
with `tasks_per_node` > 1 start one process per device. Each composes the same config and builds the same
data and models from the same seeds; `init()` joins them into one process group. Then:

- what trains is wrapped in DDP (`wrap`); a frozen teacher runs unwrapped on every process;
- each process takes its shard of every epoch's global order (`shard`; in-memory data and the file
  loaders' seeded order alike): `batch_size` stays the global batch, so a recipe means the same at any
  world size;
- metric sums and counts are added up across processes (`sum_across`), never averaged means;
- a stop signal is agreed on (`any_rank`), so every process stops at the same step;
- only rank 0 writes (`is_main`: checkpoints, metrics, summaries, logs), the others wait (`barrier`).

Without a launcher nothing here does anything: one process, no process group, the code paths of a
single-device run unchanged.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from kdrun import KdrunError

log = logging.getLogger(__name__)

_ERROR_KEY = "kdrun/error"  # the first failing process leaves its one line here for the others


@dataclass
class _Settings:
    sync_bn: bool = False
    device: Optional[torch.device] = None
    store: Optional[Any] = None
    # The random stream of a training pass (see shard): the last seed all processes shared, the passes
    # since, and the seed this process's own stream got.
    shared_seed: int = 0
    passes: int = 0
    own_seed: Optional[int] = None


_settings = _Settings()


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a multi-process launch."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    source: str  # torchrun, submitit or srun


def launch() -> Optional[Launch]:
    """The launch this process belongs to, from torchrun's environment, submitit's JobEnvironment, or
    SLURM's (an `srun` step of several tasks); None for a process started alone."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env or {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} <= env.keys():
        return Launch(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]), env["MASTER_ADDR"],
                      int(env["MASTER_PORT"]), "torchrun")
    if env.get("SUBMITIT_EXECUTOR") or int(env.get("SLURM_STEP_NUM_TASKS", 1)) > 1:
        job = _submitit_env()
        world = job.num_tasks if env.get("SUBMITIT_EXECUTOR") else int(env["SLURM_STEP_NUM_TASKS"])
        if world < 2:  # one task per job (a sweep of one-GPU jobs): nothing to join
            return None
        # Every task of a job derives the same port from the job's id (MASTER_PORT overrides it).
        digits = "".join(c for c in str(job.job_id) if c.isdigit()) or "0"
        port = int(env.get("MASTER_PORT") or 20000 + int(digits) % 20000)
        return Launch(job.global_rank, job.local_rank, world, env.get("MASTER_ADDR") or job.hostnames[0], port,
                      "submitit" if env.get("SUBMITIT_EXECUTOR") else "srun")
    return None


def _submitit_env():
    try:
        import submitit
        from submitit.slurm.slurm import SlurmJobEnvironment
    except ImportError:
        raise KdrunError("a SLURM job of several tasks needs submitit to read its environment: "
                         "pip install 'kdrun[sweep]' (or submitit)") from None
    # Under submitit its JobEnvironment (slurm or local); under a plain srun, SLURM's variables.
    return submitit.JobEnvironment() if os.environ.get("SUBMITIT_EXECUTOR") else SlurmJobEnvironment()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if active():
        return dist.get_rank()
    started = launch()
    return started.rank if started else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes; also before init (a launcher's callbacks) and without one."""
    return rank() == 0


def init(device: torch.device, timeout_s: float, sync_bn: bool) -> torch.device:
    """Joins this process to its launch's process group (once per process; a no-op without a launcher)
    and returns its device: `cuda` (device=auto or cuda) becomes cuda:LOCAL_RANK. CUDA devices talk over
    NCCL, the CPU over gloo (which also carries the small CPU-side agreements of a CUDA run)."""
    started = launch()
    if started is None:
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", started.local_rank % torch.cuda.device_count())
    if active():
        return device
    if device.type not in ("cuda", "cpu"):
        raise KdrunError(f"device={device}: distributed training runs on CUDA devices (NCCL) or the CPU (gloo); "
                         "use device=auto, cuda or cpu")
    if sync_bn and device.type != "cuda":
        raise KdrunError("sync_bn=true: SyncBatchNorm runs on CUDA devices only; use sync_bn=false on the CPU")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s)
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent serves it
    store = dist.TCPStore(started.master_addr, started.master_port, started.world_size,
                          is_master=started.rank == 0 and not agent_store, timeout=timeout)
    dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", store=store,
                            rank=started.rank, world_size=started.world_size, timeout=timeout)
    _settings.sync_bn, _settings.device, _settings.store = sync_bn, device, store
    atexit.register(_close)
    if started.rank != 0:  # one log: rank 0's (the others still show warnings and errors on their console)
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(logging.WARNING)
    log.info("distributed: %d processes (%s), this one rank %d on %s", started.world_size, started.source,
             started.rank, device)
    return device


def _close() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def from_main(value: Any) -> Any:
    """Rank 0's `value`, on every process (a decision all must share: a run directory, a cache hit)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every process when it is true on any (a stop signal that reached some processes first)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)])  # on the CPU (gloo): no wait on a GPU's queue at every step
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_across(*parts):
    """Each part (a number, a tensor, or a dict of them) summed over all processes, in one reduction:
    the sums and counts that give exact epoch metrics and evaluations (not means of means)."""
    if not active():
        return parts if len(parts) > 1 else parts[0]
    flat: List[Any] = []
    for part in parts:
        flat.extend(part.values() if isinstance(part, dict) else [part])
    device = next((v.device for v in flat if isinstance(v, torch.Tensor)), torch.device("cpu"))
    if device.type == "cpu" and _settings.device is not None and _settings.device.type == "cuda":
        device = _settings.device
    total = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in flat])
    dist.all_reduce(total)
    values = iter(total.tolist())

    def same_kind(old, new):
        if isinstance(old, torch.Tensor):
            return torch.tensor(new, dtype=old.dtype, device=old.device)
        return type(old)(round(new) if isinstance(old, int) else new)

    out = tuple({k: same_kind(v, next(values)) for k, v in p.items()} if isinstance(p, dict)
                else same_kind(p, next(values)) for p in parts)
    return out if len(out) > 1 else out[0]


def local_batch(batch_size: int) -> int:
    """This process's share of a global batch."""
    world = world_size()
    if batch_size % world:
        log.warning("batch size %d is not a multiple of the %d processes: the global batch is %d", batch_size,
                    world, math.ceil(batch_size / world) * world)
    return math.ceil(batch_size / world)


def shard(order: torch.Tensor, train: bool) -> torch.Tensor:
    """This process's share of a global order of samples: every world-th one from its rank, so that its
    k-th batch and the others' together are the k-th global batch. A training order is first padded
    (by its first samples, as DistributedSampler does) so that every process takes the same number of
    steps; an evaluation order is not (its sums are exact). After a training order, the process's
    random stream is made its own, so that processes draw their own augmentation and dropout."""
    world = world_size()
    if world == 1:
        return order
    if train:
        passes, seed = _new_pass()
        if passes:  # a second pass with no reseed between: `order` came from this process's own stream
            order = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed)).to(order.device)
        order = torch.cat([order, order[: (-len(order)) % world]]) if len(order) >= world else order.repeat(world)
        _own_random_stream(seed)
    return order[rank()::world]


def shard_size(n: int, train: bool) -> int:
    """How many of n samples `shard` gives this process."""
    world = world_size()
    return math.ceil(n / world) if train else len(range(rank(), n, world))


def _mix(*parts) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _new_pass() -> tuple[int, int]:
    """(training passes since the engine last seeded the global stream, a seed all processes share for
    this pass). The engine seeds every epoch alike on every process; a caller that passes over a loader
    again without reseeding (FT's paraphraser epochs) finds each process on its own stream, so the
    shared seed is then derived from the last one."""
    if torch.initial_seed() != _settings.own_seed:  # seeded since the last pass: shared by all
        _settings.shared_seed, _settings.passes = torch.initial_seed(), 0
    else:
        _settings.passes += 1
    return _settings.passes, _mix(_settings.shared_seed, _settings.passes)


def _own_random_stream(seed: int) -> None:
    """From here on this process draws its own augmentation and dropout, not its neighbours' copies."""
    _settings.own_seed = _mix(seed, "rank", rank())
    torch.manual_seed(_settings.own_seed)


def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """The whole of an evaluation-order result (one row per sample) from every process's `shard`."""
    world = world_size()
    if world == 1:
        return local
    rows = math.ceil(n / world)
    padded = torch.zeros(rows, *local.shape[1:], dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty(n, *local.shape[1:], dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, n, world))]
    return out


class _LossOnly(nn.Module):
    """A trainer whose outputs other than `loss` are detached: DDP finds the parameters a step uses by
    following its outputs' graphs, and a first stage (FitNets' hints) still computes the student's
    logits, which its loss does not use."""

    def __init__(self, trainer: nn.Module):
        super().__init__()
        self.trainer = trainer

    def forward(self, *args, **kwargs):
        out = self.trainer(*args, **kwargs)
        if isinstance(out, dict):
            return {k: v if k == "loss" else v.detach() for k, v in out.items()}
        return out


def wrap(model: nn.Module) -> nn.Module:
    """`model` in DistributedDataParallel (BatchNorm made SyncBatchNorm with sync_bn=true); itself
    without a process group. The unwrapped model stays the one to save and evaluate.

    static_graph: a first stage leaves the student's later layers unused at every step; DDP learns that
    set at the first step instead of searching the graph at each one, and their gradients stay None,
    as in one process."""
    if not active():
        return model
    if _settings.sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the top: the parameters are the same
    device_ids = [_settings.device] if _settings.device is not None and _settings.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(_LossOnly(model), device_ids=device_ids, static_graph=True,
                                               gradient_as_bucket_view=True)


@contextlib.contextmanager
def main_holds(lock):
    """`with main_holds(FileLock(...))`: rank 0 takes the lock (against other jobs: another sweep job may
    hold it for hours, training the teacher both need); the other processes wait for it in short,
    repeated agreements rather than on the file, so a lost rank 0 still ends them within the timeout."""
    if not active():
        with lock:
            yield
        return
    from filelock import Timeout

    while True:
        got = False
        if is_main():
            try:
                lock.acquire(timeout=5)
                got = True
            except Timeout:
                pass
        if any_rank(got):
            break
    try:
        yield
    finally:
        if is_main():
            lock.release()


def report_failure(line: str) -> None:
    """Leaves this process's one-line error where the others look when their next agreement fails."""
    if _settings.store is not None and active():
        with contextlib.suppress(Exception):
            _settings.store.compare_set(_ERROR_KEY, "", f"process {rank()}: {line}")


def peer_failure(error: BaseException) -> Optional[str]:
    """The one line for a process whose collective failed because another process ended: that process's
    own error when it left one, else what the collective said."""
    if _settings.store is None or not isinstance(error, (dist.DistError, RuntimeError)):
        return None
    with contextlib.suppress(Exception):
        if _settings.store.check([_ERROR_KEY]):
            return _settings.store.get(_ERROR_KEY).decode()
    if isinstance(error, dist.DistError):
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"another process of this run ended ({first})"
    return None


def follower_overrides(argv: List[str]) -> List[str]:
    """Hydra arguments for a process that is not rank 0 of a torchrun or srun launch: the same config,
    but its own run directory is a temporary one (rank 0's, whose name holds rank 0's start time, is
    broadcast in run()), with no .hydra folder."""
    started = launch()
    if started is None or started.rank == 0 or started.source == "submitit":
        return argv
    scratch = tempfile.mkdtemp(prefix=f"kdrun-rank{started.rank}-")
    atexit.register(shutil.rmtree, scratch, True)
    kept = [a for a in argv if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir=", "hydra.output_subdir="))]
    return [*kept, f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}", "hydra.output_subdir=null"]
