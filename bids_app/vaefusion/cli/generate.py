"""``vaefusion-generate MODEL_DIR OUT_DIR {decode,interpolate,sample}``: new volumes from a model.

* ``decode --latents FILE``: every row of a TSV with columns ``z000``... (a subject's
  ``*_desc-vae_latents.tsv``, ``group/centres.tsv``, or points of your own);
* ``interpolate --source FILE --modality M [--target FILE] [--target-modality M2]
  --steps N``: the straight line between two latent points, from two modalities of one subject
  or one modality of two subjects (FILE: a latents TSV, or a preprocessed stack that the model
  encodes);
* ``sample --n N [--around group/centres.tsv --modality M --group G --scale S]``: from the
  prior N(0, I), or around a latent group centre.

Each writes a 4D NIfTI (one volume per point) on the model's grid and affine, with a JSON
sidecar listing the points. Exit codes as ``vaefusion``: 64 a bad option or an unknown
modality, 65 bad data (e.g. a latent table of the wrong width), 66 a missing model or file,
73 an output folder that cannot be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from vaefusion import __version__
from vaefusion.errors import EXIT_CODES, EXIT_OK, EXIT_USAGE, OutputError, VaefusionError

PROG = "vaefusion-generate"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse hook: usage errors exit 64, not 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(f"  {c:>3}  {d}" for c, d in EXIT_CODES.items()
                                         if c in (0, 1, 64, 65, 66, 73))
    p = _Parser(prog=PROG, description="Decode, interpolate or sample volumes with a trained "
                "vaefusion VAE (a folder with model.safetensors and model.json).",
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
                allow_abbrev=False)
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="a trained model, e.g. OUTPUT_DIR/group/models/vae_L128_seed0_rep0_fold0")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where the NIfTI goes")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where the network runs (cpu)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{decode,interpolate,sample}",
                           parser_class=_Parser)
    d = sub.add_parser("decode", help="decode the latent points of a TSV")
    d.add_argument("--latents", type=Path, required=True, metavar="FILE",
                   help="TSV with one point per row in columns z000, z001, ...")
    i = sub.add_parser("interpolate", help="volumes along the line between two latent points")
    i.add_argument("--source", type=Path, required=True, metavar="FILE",
                   help="a latents TSV or a preprocessed stack (*_desc-preproc_stack.nii.gz)")
    i.add_argument("--modality", required=True, metavar="M", help="the modality in --source")
    i.add_argument("--target", type=Path, default=None, metavar="FILE",
                   help="the end point's file (default: --source)")
    i.add_argument("--target-modality", default=None, metavar="M",
                   help="the end point's modality (default: --modality)")
    i.add_argument("--group", default=None, help="the group in a centres TSV (e.g. SZ)")
    i.add_argument("--steps", type=int, default=8, help="points including both ends (8)")
    s = sub.add_parser("sample", help="volumes sampled from the prior or around a centre")
    s.add_argument("--n", type=int, default=8, help="how many volumes (8)")
    s.add_argument("--seed", type=int, default=0, help="random seed (0)")
    s.add_argument("--around", type=Path, default=None, metavar="FILE",
                   help="sample around a point of this latents TSV (e.g. group/centres.tsv) "
                   "instead of the prior")
    s.add_argument("--modality", default=None, metavar="M", help="the point's modality")
    s.add_argument("--group", default=None, help="the point's group in a centres TSV")
    s.add_argument("--scale", type=float, default=1.0,
                   help="SD of the samples around the point (1.0, the prior's)")
    for sp in (d, i, s):
        sp.add_argument("--as-modality", default=None, metavar="M",
                        help="a model trained with --scaling voxelwise draws every point as a "
                        "map of modality M (default: the point's own modality, where the "
                        "table or --modality names it); a max-abs model ignores it")
    return p


def _decode(gen, args) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    from vaefusion.interpret.generate import read_latent_table

    table = read_latent_table(args.latents, gen.latent_dim)
    args.own_modalities = table.modalities()
    return table.z, table.labels(), {"Source": str(args.latents)}


def _interpolate(gen, args) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    from vaefusion.interpret.generate import interpolate, point_of

    target = args.target or args.source
    target_modality = args.target_modality or args.modality
    if target == args.source and target_modality == args.modality:
        raise VaefusionError("interpolate needs two different points: give --target FILE "
                             "(another subject) or --target-modality M (another modality).",
                             EXIT_USAGE)
    if args.steps < 2:
        raise VaefusionError(f"--steps {args.steps} must be at least 2.", EXIT_USAGE)
    z0 = point_of(gen, args.source, args.modality, args.group)
    z1 = point_of(gen, target, target_modality, args.group)
    z, alpha = interpolate(z0, z1, args.steps)
    args.own_modalities = [args.modality] * len(z)
    return z, [f"alpha={a:.3f}" for a in alpha], {
        "From": f"{args.source}:{args.modality}", "To": f"{target}:{target_modality}",
        "Alpha": [float(a) for a in alpha]}


def _sample(gen, args) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    from vaefusion.interpret.generate import point_of, sample

    centre = None
    extra: dict[str, Any] = {"Seed": args.seed, "Scale": args.scale}
    if args.around is not None:
        if not args.modality:
            raise VaefusionError("sample --around needs --modality (the point's modality).",
                                 EXIT_USAGE)
        centre = point_of(gen, args.around, args.modality, args.group)
        extra["Around"] = f"{args.around}:{args.modality}" + (f":{args.group}"
                                                              if args.group else "")
    else:
        extra["Around"] = "the prior N(0, I)"
    z = sample(args.n, gen.latent_dim, args.seed, centre, args.scale)
    args.own_modalities = [args.modality] * len(z) if args.modality else None
    return z, [f"sample{k + 1}" for k in range(len(z))], extra


COMMANDS = {"decode": ("decoded", _decode), "interpolate": ("interpolated", _interpolate),
            "sample": ("sampled", _sample)}


def run(args) -> Path:
    """Run one subcommand; returns the written NIfTI."""
    from vaefusion.cli.run import creatable
    from vaefusion.disk import naming
    from vaefusion.disk.io import write_json, write_nifti_atomic
    from vaefusion.interpret.generate import Generator
    from vaefusion.training.device import select_device

    gen = Generator.load(args.model_dir, str(select_device(args.device)))
    out_dir = Path(args.out_dir).expanduser().resolve()
    why = creatable(out_dir)
    if why:
        raise OutputError(f"Cannot write OUT_DIR {out_dir} ({why}); give a writable folder.")
    kind, command = COMMANDS[args.command]
    args.own_modalities = None
    z, labels, extra = command(gen, args)
    drawn = [args.as_modality] * len(z) if args.as_modality else args.own_modalities
    volumes = gen.decode(z, drawn if gen.voxelwise else None)
    if gen.voxelwise:
        extra["DrawnAs"] = drawn
    path = naming.generated_image(out_dir, kind)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_nifti_atomic(path, gen.image(volumes))
    except OSError as exc:
        raise OutputError(f"Cannot write {path} ({exc.strerror}); give a writable OUT_DIR.") \
            from None
    write_json(naming.sidecar(path), {
        "Description": f"Volumes {kind} by vaefusion-generate {args.command}, one per latent "
                       f"point, on the model's grid.",
        "Volumes": labels, **extra, **gen.provenance(),
        "Latents": np.round(z.astype(np.float64), 6).tolist()})
    return path


def main(argv: list[str] | None = None) -> int:
    """Console script ``vaefusion-generate``; returns the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = run(args)
    except VaefusionError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return exc.code
    print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
