"""Where and how a run executes: the one device, CPU threads, seeding, memory, the optimiser.

Entry points call :func:`select_device` and :func:`seed_everything` once and pass the
results down; nothing below them picks a device of its own.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from Utils import Parallel, Spmm
from Utils.Errors import ConfigError


def expose_gpu(args) -> None:
    """--gpu, when given, replaces CUDA_VISIBLE_DEVICES (the published tool always forced '2')."""
    if getattr(args, "gpu", None) is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu


def device_named(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (CUDA when available) as a torch device."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("--device=cuda but CUDA is not available here (use --device=auto or --device=cpu)")
    return torch.device("cuda")


def select_device(args) -> torch.device:
    """The one device of a training run, after --gpu (CUDA_VISIBLE_DEVICES) and --threads.

    Under torchrun (:mod:`Utils.Parallel`) each process takes the GPU of its local rank, and
    on CPU, without --threads, an equal share of the machine's cores."""
    expose_gpu(args)
    threads = args.threads
    if threads <= 0 and Parallel.launched():
        threads = max(1, (os.cpu_count() or 1) // Parallel.local_world())
    if threads > 0:
        torch.set_num_threads(threads)
        Spmm.set_threads(threads)
    keep_freed_memory()
    device = device_named(args.device)
    if device.type == "cuda" and Parallel.launched():
        device = torch.device("cuda", Parallel.local_rank())
        torch.cuda.set_device(device)
    set_deterministic(args.deterministic, device)
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


def seed_everything(seed: int) -> None:
    """Seed python's random, numpy and torch (every CUDA device too, when there is one)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
