"""Distributed helpers: the only module that calls ``torch.distributed``.

Every function also works without a process group (one process): rank 0, world size 1, no-ops.
Processes are started by ``torchrun`` (env ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``); plain ``python train.py`` is one process.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Iterator, List

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def init_distributed(timeout_minutes: int = 30) -> torch.device:
    """Join the torchrun process group if the environment describes one; return this rank's device.

    Backend: NCCL when CUDA is available (and ``torch.cuda.set_device(LOCAL_RANK)``, which the
    reference never called), gloo on CPU. Without torchrun's environment: one process, no group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not is_distributed():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timeout,
            **({"device_id": device} if use_cuda else {}),
            **_restart_safe_store(world_size, timeout),
        )
    return device


def _restart_safe_store(world_size: int, timeout: datetime.timedelta) -> dict:
    """Under ``torchrun`` (which shares its own TCP store with the workers, torch >= 2.5), the
    process group's keys in a namespace of this restart attempt (``TORCHELASTIC_RESTART_COUNT``).

    The shared store outlives the workers, and torch leaves the keys of a failed attempt in it:
    workers restarted by ``--max-restarts`` then hang while connecting (pytorch#135712; the
    launchers also set ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``). Elsewhere: torch's own rendezvous.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"groundnlq/attempt_{attempt}", store), "rank": int(os.environ["RANK"]),
            "world_size": world_size}


def destroy_distributed(completed: bool) -> None:
    """Leave the process group; after a ``completed`` run, only once every rank got here.

    The barrier is for the last collective (a snapshot's ``all_gather_object``): a gloo worker
    thread still holds its work, and freeing its tensors needs the GIL. A rank that exits at once
    can reach interpreter shutdown first, and the process aborts ("terminate called without an
    active exception", pytorch PR 179291): a run that trained fully then fails 1 time in 30-80.
    The barrier releases the GIL while it waits for the slowest rank. After a failure there is
    no barrier: the other ranks may never come.
    """
    if is_distributed():
        if completed:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def leave_group_when_done() -> Iterator[None]:
    """Run the body, then leave the process group: at a barrier when the body returned, at once
    when it raised (``destroy_distributed``)."""
    try:
        yield
    except BaseException:
        destroy_distributed(completed=False)
        raise
    destroy_distributed(completed=True)


def all_reduce_mean(value: Any) -> Any:
    """Mean over ranks of a tensor (returns a tensor on its device) or a number (returns a float)."""
    if get_world_size() == 1:
        return value
    is_tensor = torch.is_tensor(value)
    t = value.detach().clone() if is_tensor else torch.tensor(float(value), dtype=torch.float64)
    home = t.device
    if dist.get_backend() == "nccl" and t.device.type != "cuda":  # NCCL reduces GPU tensors only
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t = (t / get_world_size()).to(home)
    return t if is_tensor else float(t.item())


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
