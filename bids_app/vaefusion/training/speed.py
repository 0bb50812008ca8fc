"""GPU speed switches and the published version traps they must avoid.

Config switches (execution only: the same math, so not hashed as method settings, except
``bf16``, which changes the numbers):

* ``bf16`` (``--bf16``): bf16 autocast. Unset (None, the default) means on where the GPU
  supports bf16 and the cuDNN is not one with the wrong bf16 conv3d results; CPUs stay fp32.
* ``channels_last``: 3D convolutions in ``channels_last_3d`` layout.
* ``compile``: ``nn.Module.compile`` (torch.compile in place, so state dict names stay).
* ``cuda_graphs``: compile with ``mode="reduce-overhead"`` (CUDA graphs), CUDA only.

Their defaults are what was measured best where it could be measured (see
benchmarks/README.md: no GPU was lent to measure the CUDA rows, so ``channels_last``,
``compile`` and ``cuda_graphs`` default to off until a GPU row says otherwise).

Version traps, checked at run time (:func:`version_traps`):

* torch 2.9.x: 3D convolutions under AMP ran ~4x slower than in 2.8 (pytorch/pytorch#166122)
  and bf16 conv3d took ~3x the memory (#166643, fixed with cuDNN >= 9.15): a warning names it.
* cuDNN 9.8-9.10 (torch reports 90800-91099): wrong bf16 conv3d results on large inputs
  (pytorch/pytorch#163539, a silent correctness bug): bf16 falls back to fp32 with a warning.
"""

from __future__ import annotations

import logging

import torch

LOG = logging.getLogger("vaefusion.training")

#: cuDNN versions (``torch.backends.cudnn.version()``) with wrong bf16 conv3d results.
BAD_BF16_CUDNN = range(90800, 91100)


def version_traps(torch_version: str, cudnn: int | None) -> list[str]:
    """Warnings for this torch and cuDNN (cuDNN None: not in use), one sentence each."""
    out = []
    if torch_version.startswith("2.9."):
        out.append(f"torch {torch_version}: 3D convolutions under autocast are ~4x slower than "
                   f"in torch 2.8 (pytorch/pytorch#166122) and bf16 conv3d needs ~3x the "
                   f"memory (#166643); use torch 2.8 or >= 2.10 for GPU training.")
    if cudnn is not None and cudnn in BAD_BF16_CUDNN:
        out.append(f"cuDNN {cudnn}: bf16 conv3d gives wrong results on large inputs "
                   f"(pytorch/pytorch#163539); bf16 is off (fp32), install cuDNN >= 9.11.")
    return out


def resolve_bf16(asked: bool | None, device: torch.device, *, supported: bool | None = None,
                 cudnn: int | None = None, log: logging.Logger | None = None) -> bool:
    """Whether to train under bf16 autocast: ``asked`` (None: where supported) on a CUDA
    device that supports bf16, unless its cuDNN has the wrong-results bug (a warning then)."""
    log = log or LOG
    if device.type != "cuda":
        return False
    if supported is None:
        supported = torch.cuda.is_bf16_supported()
    if cudnn is None and torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
    want = supported if asked is None else bool(asked)
    if want and not supported:
        log.warning("--bf16: this GPU has no bf16 support; training in fp32.")
        return False
    if want and cudnn in BAD_BF16_CUDNN:
        log.warning("%s", version_traps("", cudnn)[0])
        return False
    return want


def apply_switches(model: torch.nn.Module, device: torch.device, *, channels_last: bool,
                   compile: bool, cuda_graphs: bool, log: logging.Logger | None = None
                   ) -> torch.nn.Module:
    """Apply the layout and compilation switches to ``model`` in place; returns it."""
    log = log or LOG
    for warning in version_traps(torch.__version__, torch.backends.cudnn.version()
                                 if device.type == "cuda" else None):
        log.warning("%s", warning)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    if cuda_graphs and device.type != "cuda":
        log.info("cuda_graphs applies to CUDA only: ignored on %s", device)
        cuda_graphs = False
    if compile or cuda_graphs:
        model.compile(mode="reduce-overhead" if cuda_graphs else None)
    return model
