"""``vaefusion-simulate``: write a simulated BIDS dataset with NeuroMark and GMV derivatives.

A bad option value exits with code 64 after one sentence on stderr (no traceback); an output
folder that cannot be written exits with 73.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from vaefusion import __version__
from vaefusion.errors import EXIT_CANT_CREATE, EXIT_OK, EXIT_USAGE, VaefusionError
from vaefusion.inputs import reference
from vaefusion.simulate import (
    ARMS,
    DEFAULT_GM_EFFECTS,
    DEFAULT_ICN_EFFECTS,
    DEFAULT_SHIFT_ICNS,
    GM_NATIVE_PREFIXES,
    NAMINGS,
    SHIFT_DIRECTIONS,
    GmEffect,
    IcnEffect,
    SimulationConfig,
    simulate_dataset,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse hook: usage errors exit 64, not 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help).\n")


def _number(kind: type, minimum: float | None = None, maximum: float | None = None
            ) -> Callable[[str], float | int]:
    def parse(value: str) -> float | int:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"'{value}' is not {'an integer' if kind is int else 'a number'}") from None
        if minimum is not None and number < minimum:
            raise argparse.ArgumentTypeError(f"'{value}' must be at least {minimum:g}")
        if maximum is not None and number > maximum:
            raise argparse.ArgumentTypeError(f"'{value}' must be at most {maximum:g}")
        return number

    return parse


def parse_icn_effect(value: str) -> IcnEffect:
    """``INDEX:STRENGTH[:RADIUS_MM]``, e.g. ``45:-0.4:8``."""
    parts = value.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        index = int(parts[0])
        strength = float(parts[1])
        radius = float(parts[2]) if len(parts) == 3 else 8.0
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{value}' is not INDEX:STRENGTH[:RADIUS_MM] (e.g. 45:-0.4:8)") from None
    if not 1 <= index <= reference.N_ICN:
        raise argparse.ArgumentTypeError(f"ICN index {index} is not between 1 and "
                                         f"{reference.N_ICN}")
    if radius <= 0:
        raise argparse.ArgumentTypeError(f"radius {radius:g} mm must be positive")
    return IcnEffect(index, strength, radius)


def parse_gm_effect(value: str) -> GmEffect:
    """``X,Y,Z:RADIUS_MM:STRENGTH`` in MNI mm, e.g. ``-38,12,0:12:-0.2``."""
    parts = value.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        xyz = tuple(float(v) for v in parts[0].split(","))
        if len(xyz) != 3:
            raise ValueError
        radius, strength = float(parts[1]), float(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{value}' is not X,Y,Z:RADIUS_MM:STRENGTH (e.g. -38,12,0:12:-0.2)") from None
    if radius <= 0:
        raise argparse.ArgumentTypeError(f"radius {radius:g} mm must be positive")
    return GmEffect((xyz[0], xyz[1], xyz[2]), radius, strength)


def _fmt_icn(e: IcnEffect) -> str:
    return f"{e.index}:{e.strength:g}:{e.radius_mm:g}"


def _fmt_gm(e: GmEffect) -> str:
    return f"{','.join(f'{v:g}' for v in e.center_mm)}:{e.radius_mm:g}:{e.strength:g}"


def build_parser() -> argparse.ArgumentParser:
    """The ``vaefusion-simulate`` argument parser."""
    d = SimulationConfig()
    p = _Parser(
        prog="vaefusion-simulate",
        description="Write a simulated BIDS dataset: participants.tsv with diagnosis (SZ/HC), "
        "NeuroMark ICN maps (derivatives/neuromark, from the real NeuroMark template with "
        "SimTB-style per-subject variability) and smoothed modulated gray matter "
        "(derivatives/spm, from the MNI152 GM template), with a chosen patient-control "
        "difference (--arm: local amplitude effects, none, displaced ICNs, or a shared "
        "factor spread over many modalities). The ground "
        "truth is written to OUT_DIR/code/simulation.json.",
        epilog="Values that start with '-' work as they are (--gm-effect -38,12,0:12:-0.2) or "
        "with '=' (--gm-effect=-38,12,0:12:-0.2). Exit codes: 0 success, 64 bad option, "
        "73 cannot write OUT_DIR.",
    )
    # Let values such as "-38,12,0:12:-0.2" through as arguments rather than as options
    # (no option of this parser starts with '-<digit>').
    p._negative_number_matcher = re.compile(r"^-\d")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                   help="where the dataset is written (new or empty folder)")
    p.add_argument("--version", action="version", version=f"vaefusion-simulate {__version__}")

    g = p.add_argument_group("participants")
    g.add_argument("--n-subjects", type=_number(int, 1), default=d.n_subjects, metavar="N",
                   help=f"number of participants (default {d.n_subjects})")
    g.add_argument("--seed", type=_number(int, 0), default=d.seed, metavar="S",
                   help="random seed; the same seed gives identical files (default 0)")
    g.add_argument("--patient-fraction", type=_number(float, 0, 1), default=d.patient_fraction,
                   metavar="F", help="fraction of SZ participants, rounded (default 0.5)")
    g.add_argument("--n-sites", type=_number(int, 1), default=d.n_sites, metavar="K",
                   help=f"acquisition sites, each with its own site effect (default {d.n_sites})")
    g.add_argument("--sessions", type=_number(int, 0), default=d.sessions, metavar="K",
                   help="sessions per participant; 0 = no session level (default 0)")

    g = p.add_argument_group("grids")
    g.add_argument("--icn-res", type=_number(float, 1, 20), default=d.icn_res, metavar="MM",
                   help="ICN voxel size; 3 = NeuroMark's 53x63x52 grid, coarser sizes keep its "
                   "origin and field of view (e.g. 9 = 18x21x18) (default 3)")
    g.add_argument("--gm-res", type=_number(float, 0.5, 20), default=d.gm_res, metavar="MM",
                   help="GM voxel size on SPM's bounding box, a grid different from the ICNs' "
                   "(1.5 = 121x145x121) (default 1.5)")
    g.add_argument("--n-components", type=_number(int, 1, reference.N_ICN),
                   default=d.n_components, metavar="N",
                   help="write only the first N NeuroMark ICNs (default 53)")

    g = p.add_argument_group("arm: what distinguishes patients (SZ) from controls")
    g.add_argument("--arm", choices=ARMS, default=None,
                   help="amplitude: local amplitude effects (--icn-effect, --gm-effect, "
                   "--effect-size); null: no difference at all, every method must land at "
                   "chance; shift: patients' chosen ICNs are displaced by --shift-mm (and "
                   "widened by --widen), a non-linear change; fusion: patients differ in one "
                   "shared subject factor that loads weakly on many ICNs and the gray matter "
                   "(--fusion-shift), so only the modalities together separate the groups "
                   "(default amplitude)")
    g.add_argument("--no-effects", action="store_true",
                   help="plant no effect at all (a null dataset; the same as --arm null)")
    g.add_argument("--shift-icn", dest="shift_icns", action="append",
                   type=_number(int, 1, reference.N_ICN), metavar="INDEX",
                   help="shift arm: an ICN to displace in patients; repeatable (default: "
                   + " ".join(map(str, DEFAULT_SHIFT_ICNS)) + ", those within --n-components)")
    g.add_argument("--shift-mm", type=_number(float, 0, 30), metavar="MM",
                   help=f"shift arm: displacement of a patient's ICN, times its effect "
                   f"multiplier (see --effect-variability) (default {d.shift_mm:g})")
    g.add_argument("--shift-direction", choices=SHIFT_DIRECTIONS,
                   help="shift arm: random = each patient's own direction, so the patients' mean "
                   "map barely moves; fixed = one direction per ICN drawn from --seed (default "
                   f"{d.shift_direction})")
    g.add_argument("--widen", type=_number(float), metavar="F",
                   help="shift arm: also widen a patient's ICN about its peak by the factor "
                   f"1 + F (0.1 = 10%%; default {d.widen:g}; 0 = no widening)")

    g = p.add_argument_group("amplitude arm (SZ only)")
    g.add_argument("--icn-effect", dest="icn_effects", action="append", type=parse_icn_effect,
                   metavar="INDEX:STRENGTH[:RADIUS_MM]",
                   help="multiply ICN INDEX by 1 + STRENGTH x a Gaussian at its NeuroMark peak "
                   "that halves at RADIUS_MM (default 8); -0.4 = 40%% local decrease; repeatable "
                   "(default: " + " ".join(_fmt_icn(e) for e in DEFAULT_ICN_EFFECTS)
                   + ", those within --n-components)")
    g.add_argument("--gm-effect", dest="gm_effects", action="append", type=parse_gm_effect,
                   metavar="X,Y,Z:RADIUS_MM:STRENGTH",
                   help="multiply GM by 1 + STRENGTH x a Gaussian at MNI X,Y,Z mm that halves at "
                   "RADIUS_MM; repeatable (default: "
                   + " ".join(_fmt_gm(e) for e in DEFAULT_GM_EFFECTS) + ")")
    g.add_argument("--no-icn-effects", action="store_true",
                   help="plant no ICN effect (GM effects stay)")
    g.add_argument("--no-gm-effects", action="store_true",
                   help="plant no GM effect (ICN effects stay)")
    g.add_argument("--effect-size", type=_number(float, 0), default=None, metavar="X",
                   help="multiplies every effect's strength (default 1; 0 = no effects)")
    g.add_argument("--effect-variability", type=_number(float, 0), metavar="SD",
                   default=d.effect_variability,
                   help="sd of each patient's effect multiplier, in every arm "
                   "(default %(default)s)")

    g = p.add_argument_group("fusion arm (SZ only)")
    g.add_argument("--fusion-shift", type=_number(float, 0), default=None, metavar="SD",
                   help="patients' mean of the shared fusion factor, in SDs of the factor "
                   f"(default {d.fusion_shift:g}); the factor loads weakly on about ten ICNs "
                   "of five domains and three gray-matter regions")

    g = p.add_argument_group("variability")
    g.add_argument("--noise", type=_number(float, 0), default=d.noise, metavar="X",
                   help="multiplies every noise standard deviation (default 1; 0 = no noise)")
    g.add_argument("--gm-fwhm", type=_number(float, 0), default=d.gm_fwhm_mm, metavar="MM",
                   help="SPM smoothing of the GM maps (default 8)")

    g = p.add_argument_group("file names")
    g.add_argument("--naming", choices=NAMINGS, default=d.naming,
                   help="bids: derivatives/neuromark + derivatives/spm; native: GIFT names in "
                   "derivatives/gift (+ gift_subjects.tsv) and SPM names in derivatives/cat12; "
                   "both (default bids)")
    g.add_argument("--gm-native-prefix", choices=GM_NATIVE_PREFIXES,
                   default=d.gm_native_prefix,
                   help="prefix of the native GM names, e.g. mwp1 for CAT12 (default smwc1)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace OUT_DIR if an earlier vaefusion-simulate run wrote it")
    g.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p


def arm_conflict(args: argparse.Namespace) -> str | None:
    """Why the options of one arm cannot go with the chosen one, or None."""
    arm = args.arm or ("null" if args.no_effects else "amplitude")
    if args.no_effects and arm != "null":
        return f"--no-effects is --arm null; it cannot be combined with --arm {arm}"
    shift_options = {"--shift-icn": args.shift_icns, "--shift-mm": args.shift_mm,
                     "--shift-direction": args.shift_direction, "--widen": args.widen}
    given = [name for name, value in shift_options.items() if value is not None]
    if given and arm != "shift":
        return f"{', '.join(given)}: only for --arm shift, not --arm {arm}"
    amplitude_options = {"--icn-effect": args.icn_effects, "--gm-effect": args.gm_effects,
                         "--effect-size": args.effect_size}
    given = [name for name, value in amplitude_options.items() if value is not None]
    if given and arm != "amplitude":
        return f"{', '.join(given)}: only for --arm amplitude, not --arm {arm}"
    if args.fusion_shift is not None and arm != "fusion":
        return f"--fusion-shift: only for --arm fusion, not --arm {arm}"
    return None


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """The :class:`SimulationConfig` that the parsed options describe."""
    d = SimulationConfig()
    icn_effects = tuple(args.icn_effects) if args.icn_effects else None
    gm_effects = tuple(args.gm_effects) if args.gm_effects else None
    if args.no_icn_effects:
        icn_effects = ()
    if args.no_gm_effects:
        gm_effects = ()
    return SimulationConfig(
        n_subjects=args.n_subjects, seed=args.seed, patient_fraction=args.patient_fraction,
        n_sites=args.n_sites, sessions=args.sessions, icn_res=args.icn_res,
        gm_res=args.gm_res, n_components=args.n_components, icn_effects=icn_effects,
        gm_effects=gm_effects,
        effect_size=d.effect_size if args.effect_size is None else args.effect_size,
        effect_variability=args.effect_variability, noise=args.noise,
        gm_fwhm_mm=args.gm_fwhm, naming=args.naming, gm_native_prefix=args.gm_native_prefix,
        arm=args.arm or ("null" if args.no_effects else d.arm),
        shift_icns=tuple(args.shift_icns) if args.shift_icns else None,
        shift_mm=d.shift_mm if args.shift_mm is None else args.shift_mm,
        shift_direction=args.shift_direction or d.shift_direction,
        widen=d.widen if args.widen is None else args.widen,
        fusion_shift=d.fusion_shift if args.fusion_shift is None else args.fusion_shift,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vaefusion-simulate``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    conflict = arm_conflict(args)
    if conflict:
        parser.error(conflict)
    config = config_from_args(args)
    start = time.perf_counter()
    last = [start]

    def progress(done: int, total: int) -> None:  # a line every 10 s: no silent minutes
        now = time.perf_counter()
        if not args.quiet and done and now - last[0] >= 10:
            last[0] = now
            print(f"vaefusion-simulate: {done}/{total} participants ({now - start:.0f} s)",
                  flush=True)

    try:
        truth = simulate_dataset(args.out_dir, config, overwrite=args.overwrite,
                                 progress=progress)
    except VaefusionError as exc:
        print(f"vaefusion-simulate: error: {exc.message}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"vaefusion-simulate: error: cannot write {exc.filename or args.out_dir}: "
              f"{exc.strerror}.", file=sys.stderr)
        return EXIT_CANT_CREATE
    if not args.quiet:
        n_sz = sum(p["diagnosis"] == "SZ" for p in truth["participants"])
        print(f"vaefusion-simulate: wrote {config.n_subjects} participants ({n_sz} SZ) to "
              f"{args.out_dir} in {time.perf_counter() - start:.1f} s; ground truth in "
              f"{args.out_dir / 'code' / 'simulation.json'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
