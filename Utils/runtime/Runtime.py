"""Where and how a run executes: the one device, CPU threads, seeding, memory, the optimiser.

Entry points call :func:`select_device` (with a :class:`Utils.config.Config.Execution`) and
:func:`seed_everything` once and pass the results down; nothing below them picks a device.
"""
from __future__ import annotations

import os
import random
import sys
from typing import Optional

import numpy as np
import torch

try:
    import resource
except ImportError:  # not on Windows
    resource = None

from Utils.kernels import Spmm
from Utils.runtime import Parallel
from Utils.runtime.Errors import ConfigError


def expose_gpu(gpu: Optional[str]) -> None:
    """--gpu, when given, replaces CUDA_VISIBLE_DEVICES (the published tool always forced '2')."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def device_named(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (CUDA when available) as a torch device."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("--device=cuda but CUDA is not available here (use --device=auto or --device=cpu)")
    return torch.device("cuda")


def select_device(runtime) -> torch.device:
    """The one device of a training run, after --gpu (CUDA_VISIBLE_DEVICES) and --threads.

    Under torchrun (:mod:`Utils.runtime.Parallel`) each process takes the GPU of its local rank, and
    on CPU, without --threads, an equal share of the machine's cores."""
    expose_gpu(runtime.gpu)
    threads = runtime.threads
    if threads <= 0 and Parallel.launched():
        threads = max(1, (os.cpu_count() or 1) // Parallel.local_world())
    if threads > 0:
        torch.set_num_threads(threads)
        Spmm.set_threads(threads)
    keep_freed_memory()
    device = device_named(runtime.device)
    if device.type == "cuda" and Parallel.launched():
        device = torch.device("cuda", Parallel.local_rank())
        torch.cuda.set_device(device)
    set_deterministic(runtime.deterministic, device)
    return device


def set_deterministic(on: bool, device: torch.device) -> None:
    """Choose kernels whose results do not depend on thread timing (``--deterministic``).

    On CPU the one such kernel our steps reach is the accumulating ``index_put_`` behind the
    backward pass of ``emb[indices]`` with repeated indices: with several threads it adds a
    row's contributions in whatever order the threads reach them, so two runs differ by
    about 1e-7 after one step. ``torch.use_deterministic_algorithms`` makes it add them in
    index order (the Numba products already own their output rows). On CUDA it also needs
    cuBLAS's fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, set here before the first cuBLAS
    call) and only warns for an operator that has no deterministic kernel. Freshly
    allocated tensors are not filled (``fill_uninitialized_memory``): every kernel here
    writes what it later reads, which the rerun tests check.
    """
    if on and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=device.type != "cpu")
    torch.utils.deterministic.fill_uninitialized_memory = False


def keep_freed_memory() -> None:
    """Let glibc reuse freed blocks of up to 1 GiB instead of returning them to the OS.

    Every training step allocates and frees many N×d tensors (17 MB each on Yelp);
    by default glibc maps each one afresh and pays a page fault per 4 KiB
    (measured: zeroing one took 19 ms instead of 8 ms). Numbers are unaffected.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel (CPU and CUDA): the same update, several times faster."""
    return torch.optim.Adam(params, lr=lr, fused=True)


#: The largest seed every seeder accepts (NumPy's ``np.random.seed`` refuses 2**32 and above).
MAX_SEED = 2**32 - 1


def seed_everything(seed: int) -> None:
    """Seed python's random, numpy and torch (every CUDA device too, when there is one)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ----------------------------------------------------------------------------- memory
def machine_memory(device=None) -> Optional[int]:
    """Bytes of memory where ``device``'s tensors live: a CUDA device's total memory, else the
    machine's RAM (``SC_PHYS_PAGES`` x ``SC_PAGE_SIZE``); None where the system does not say."""
    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def peak_memory_line() -> str:
    """The process's peak resident memory so far (``getrusage``), and on CUDA the peak of tensor memory
    allocated on the current device: the line every command prints when it ends."""
    text = "Peak memory: RSS " + ("unknown" if resource is None else format_bytes(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        text += f", CUDA tensors {format_bytes(torch.cuda.max_memory_allocated())}"
    return text


def format_bytes(n_bytes: int) -> str:
    """``n_bytes`` in the largest binary unit that keeps it at least 1 (``37.3 GiB``)."""
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def require_memory(n_bytes: int, what: str, advice: str, error=ConfigError, device=None) -> None:
    """Refuse, before anything is allocated, what clearly cannot fit: ``what`` needs at least
    ``n_bytes`` bytes, more than the whole memory of the machine (or of ``device``, a GPU).

    ``n_bytes`` is a lower bound of what the caller is about to allocate, so nothing that could
    fit is refused; without this check such a request ends in an allocator traceback, or the
    kernel kills the process without a message. Raises ``error`` (one line: what, how much,
    how much there is, and ``advice``)."""
    total = machine_memory(device)
    if total is not None and n_bytes > total:
        where = "this GPU" if device is not None and torch.device(device).type == "cuda" else "this machine"
        raise error(f"{what} needs at least {format_bytes(n_bytes)} of memory, more than the "
                    f"{format_bytes(total)} {where} has; {advice}")


#: Bytes per embedding entry that training holds at least: the float32 table, its gradient and
#: Adam's two moments.
TRAINED_ENTRY_BYTES = 16


def require_model_memory(n_users: int, n_items: int, latdim: int, device=None) -> None:
    """Refuse a ``--latdim`` whose embedding tables cannot be trained in this memory, before they
    are allocated (:func:`require_memory`)."""
    require_memory(TRAINED_ENTRY_BYTES * (n_users + n_items) * latdim,
                   f"--latdim={latdim}: training {n_users} users + {n_items} items x {latdim} dimensions "
                   f"(the tables, their gradients and Adam's two moments, float32)",
                   "choose a smaller --latdim (the paper uses 64)", device=device)


#: Bytes per random triple of the prediction-level KD: three int64 ids.
TRIPLE_BYTES = 24


def require_triples_memory(top_range: int, device=None) -> None:
    """Refuse a ``--topRange`` whose random triples, drawn every batch, cannot fit in this memory."""
    require_memory(TRIPLE_BYTES * top_range,
                   f"--topRange={top_range}: the prediction-level KD's random (user, item, item) triples of "
                   "every batch (three int64 ids each)",
                   "choose a smaller --topRange (the published examples use 100000)", device=device)
