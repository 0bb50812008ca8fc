"""Where and how training runs: the torch device, seeding and CPU threads."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from vaefusion.errors import UsageError


# --------------------------------------------------------------------------- setup
def set_seed(seed: int, device: torch.device | str | None = None) -> None:
    """Seed python, numpy and torch (CPU and CUDA).

    For CPU work (``device`` None or cpu) torch is also switched to deterministic algorithms,
    which makes CPU runs bit-reproducible. For CUDA training speed wins instead: cuDNN picks
    its fastest kernels (``cudnn.benchmark``), some of them non-deterministic (3D transposed
    convolutions' backward), so GPU runs with one seed agree to a tolerance, not bit for bit.
    Data order and augmentation are seeded separately (:mod:`vaefusion.training.data`).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if device is None or torch.device(device).type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU, and every CUDA device when there is one) as tensors.

    They are process-global: they draw the reparameterization noise, so a resumable training
    checkpoint must hold them (data order and augmentation have their own seeds).
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA GPU; "
                         "use --device cpu or auto.")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device {name} is unknown; use auto, cpu or cuda.")
    return torch.device(name)


def configure_threads(n: int) -> None:
    """Use ``n`` threads for torch's intra-op work and for BLAS in this process.

    ``n`` is the resolved ``--omp-nthreads`` (:meth:`vaefusion.config.Config.resolve`), passed
    explicitly to every unit of work: no environment variable carries it.
    """
    from threadpoolctl import threadpool_limits

    n = max(1, int(n))
    torch.set_num_threads(n)
    threadpool_limits(limits=n)  # numpy/scipy BLAS and OpenMP pools, for this process
