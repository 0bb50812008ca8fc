"""``vaefusion-train-ddp``: one VAE trained across GPUs and nodes, started by ``torchrun``.

    torchrun --standalone --nproc-per-node 8 -m vaefusion.cli.train_ddp WORK_DIR/cache OUT
    srun torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint $HEAD:29500 -m vaefusion.cli.train_ddp WORK_DIR/cache OUT

``CACHE_DIR`` is the participant level's subject cache (``WORK_DIR/cache``); all its subjects
are used, a seeded ``--val-fraction`` of them for validation (the best checkpoint). The model
goes to ``OUT/best/`` (the weights-and-JSON directory ``vaefusion ... --model`` reads), the
resumable state to ``OUT/last/``; rerunning the same command resumes. Method options are the
group level's (``--config-file`` TOML, then the options below); ``--batch-subjects`` is the
global batch over all ranks. See docs/hpc/README.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from vaefusion.config import LIKELIHOODS, SCALINGS, Config, load_toml
from vaefusion.errors import UsageError, VaefusionError

LOG = logging.getLogger("vaefusion")

#: Options that map one-to-one onto Config fields (None: not given).
_FIELDS = ("epochs", "patience", "batch_subjects", "lr", "beta", "width", "downsample",
           "likelihood", "scaling", "val_fraction", "cv_seed", "omp_nthreads", "bf16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaefusion-train-ddp", description=__doc__.split("\n")[0])
    p.add_argument("cache_dir", type=Path, help="the participant level's WORK_DIR/cache")
    p.add_argument("out_dir", type=Path, help="where best/ and last/ go (a shared file system)")
    p.add_argument("--config-file", type=Path, help="TOML with the method settings")
    p.add_argument("--latent-dim", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cuda: NCCL, one GPU per rank (LOCAL_RANK); cpu: gloo")
    p.add_argument("--timeout-s", type=float, default=600.0,
                   help="a collective waiting longer than this for a rank fails (not hangs)")
    for name in _FIELDS:
        flag = "--" + name.replace("_", "-")
        if name == "bf16":
            p.add_argument(flag, action="store_true", default=None)
        elif name in ("likelihood", "scaling"):
            p.add_argument(flag, choices=LIKELIHOODS if name == "likelihood" else SCALINGS,
                           default=None)
        else:
            kind = float if name in ("lr", "beta", "width", "val_fraction") else int
            p.add_argument(flag, type=kind, default=None)
    return p


def _setup_logging(rank: int, world: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.ERROR, force=True,
                        format=f"%(asctime)s [rank {rank}/{world}] %(levelname)s %(message)s",
                        stream=sys.stderr)


def main(argv: list[str] | None = None,
         on_epoch_end: Callable[[object], None] | None = None) -> int:
    """Train on this rank; ``on_epoch_end`` as in :meth:`Trainer.fit` (tests)."""
    import torch.distributed as dist

    from vaefusion.training.distributed import (
        DistributedTrainer,
        init_distributed,
        peer_failure,
        split_subjects,
    )

    args = build_parser().parse_args(argv)
    try:
        data = load_toml(args.config_file) if args.config_file else {}
        cfg = Config.from_dict(data, source=f"--config-file {args.config_file}")
        for name in _FIELDS:
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
        cfg.device = "cpu" if args.device == "cpu" else cfg.device
        cfg.validate()
        paths = sorted(Path(args.cache_dir).glob("*.npy"))
        if not paths:
            raise UsageError(f"{args.cache_dir} holds no cached subject (*.npy); give the "
                             f"WORK_DIR/cache of a finished participant level.")
    except VaefusionError as exc:
        print(f"vaefusion-train-ddp: {exc}", file=sys.stderr)
        return exc.code
    ctx, device = init_distributed(args.device, args.timeout_s)
    _setup_logging(ctx.rank, ctx.world)
    cfg.device = device
    cfg = cfg.resolve()
    latent = args.latent_dim or cfg.latent_dims[0]
    seed = cfg.seeds[0] if args.seed is None else args.seed
    train, val = split_subjects(paths, cfg.val_fraction, cfg.cv_seed)
    trainer = None
    try:
        LOG.info("DDP over %d rank(s) (%s): %d train / %d val subjects, global batch %d",
                 ctx.world, ctx.backend, len(train), len(val), cfg.batch_subjects)
        trainer = DistributedTrainer(ctx, cfg, cfg.runtime(), latent, seed, train, val,
                                     args.out_dir, LOG)
        trainer.resume()
        result = trainer.fit(on_epoch_end)
        LOG.info("best epoch %d (validation loss %.6g): %s", result.best_epoch,
                 result.best_val_loss, result.best_dir)
        return 0
    except VaefusionError as exc:
        LOG.error("%s", exc)
        return exc.code
    except Exception as exc:
        failure = peer_failure(exc, ctx, Path(args.out_dir) / "last")
        if failure is None:
            raise
        LOG.error("%s", failure)
        return failure.code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
