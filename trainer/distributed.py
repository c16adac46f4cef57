"""The process group: who this process is (rank, world size, device) and the few collectives the trainer needs.

torchrun and the deepspeed launcher both export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a
plain `python train.py` has none of them and runs as a world of one without a process group (unless
DeepSpeed is asked for, which always needs one: we then create a one-process group on a free local port).
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError

_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False  # this process created a process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of `value` over ranks (every rank gets it)."""
        if not self.initialized or self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def sum_ints(self, values: list[int]) -> list[int]:
        """Element-wise sums over ranks (every rank passes a list of the same length)."""
        if not self.initialized or self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def all_equal(self, value: int) -> bool:
        """Whether every rank passed the same integer (a cheap consistency check before collective work)."""
        if not self.initialized or self.world_size == 1:
            return True
        tensor = torch.tensor([value, -value], dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor[0].item() == value and -tensor[1].item() == value

    def shutdown(self, clean: bool = True) -> None:
        """Leave together: a final barrier, so no rank exits while another still talks to it, then tear down.
        After an error there is no barrier: the other ranks may never reach it (the launcher stops them)."""
        if self.initialized and dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()
        self.initialized = False

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_name: str, timeout_minutes: float, need_group: bool = False) -> DistContext:
    """Join the launcher's process group (or make a one-process one if `need_group`) and pick this rank's device.

    Each rank of a CUDA job gets `cuda:LOCAL_RANK`; the backend is nccl on CUDA and gloo on CPU.
    """
    world_size = launched_world_size()
    if world_size > 1:
        missing = [name for name in _LAUNCHER_VARS if name not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world_size} but {', '.join(missing)} are not set; start multi-process "
                              f"runs with torchrun or the deepspeed launcher (see launch/README.md)")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(device_name, local_rank)
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    if world_size == 1 and not need_group:
        return ctx
    if world_size == 1:
        # DeepSpeed wants a process group even for one process; without launcher variables it would try MPI.
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=device if device.type == "cuda" else None)
        ctx.initialized = True
    return ctx


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                              f"launch at most that many processes per node")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def free_port() -> int:
    """A TCP port nobody listens on right now (so parallel runs on one machine do not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
