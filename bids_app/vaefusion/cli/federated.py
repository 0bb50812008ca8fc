"""``vaefusion-federated``: train and evaluate vaefusion across sites without pooling data.

``vaefusion-federated simulate SITE_DIR [SITE_DIR ...] --out OUT`` runs NVIDIA FLARE's
simulator on this machine with one client per site (each SITE_DIR a BIDS dataset that its
client preprocesses with vaefusion's participant level), the same code that runs inside
NeuroFLAME (``platforms/neuroflame/``). It writes ``OUT/model/`` (usable with
``vaefusion BIDS OUT participant --model OUT/model``) and ``OUT/summary.json``.

Exit codes are vaefusion's (``vaefusion --help``): 64 for a bad option, 66 for a missing
SITE_DIR; when sites fail, the code of their errors if they share one (65 for bad data; the
message names each site), else 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import NoReturn

from vaefusion import __version__
from vaefusion.config import DEVICES, LIKELIHOODS
from vaefusion.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    MissingInputError,
    UsageError,
    VaefusionError,
)

LOG = logging.getLogger("vaefusion")

#: Options that map one-to-one onto FederatedSettings fields.
_SETTINGS = ("rounds", "local_epochs", "latent_dim", "width", "downsample", "lr", "beta",
             "likelihood", "batch_subjects", "seed", "min_sites", "folds", "classifier_c",
             "classifier_rounds", "n_components", "label_column", "positive_label",
             "negative_label", "skip_bids_validation", "device", "round_timeout")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse hook: usage errors exit 64, not 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive(kind: type):
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{value}' is not a number") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"'{value}' must be positive")
        return number
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vaefusion-federated", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"vaefusion {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("simulate", help="run the federation in NVFlare's simulator (CPU)",
                       description="Run FedAvg training and the federated evaluation in "
                       "NVFlare's simulator, one client per SITE_DIR.")
    s.add_argument("site_dirs", nargs="+", type=Path, metavar="SITE_DIR",
                   help="one BIDS dataset per site (site-1, site-2, ... in this order)")
    s.add_argument("--out", type=Path, required=True, metavar="OUT",
                   help="output folder: model/, summary.json, sites/<site>/ (each simulated "
                   "site's own outputs)")
    s.add_argument("-w", "--work-dir", type=Path, default=None, metavar="DIR",
                   help="resumable server state and NVFlare workspace (default OUT/work)")
    s.add_argument("--parameters", type=Path, default=None, metavar="FILE",
                   help="settings as NeuroFLAME's parameters.json (options given here win)")
    g = s.add_argument_group("federation")
    g.add_argument("--rounds", type=_positive(int), help="FedAvg rounds (10)")
    g.add_argument("--local-epochs", type=_positive(int),
                   help="local epochs per site and round (1)")
    g.add_argument("--min-sites", type=_positive(int), metavar="N",
                   help="go on without failed or dropped sites while N remain (default: every "
                   "site must succeed)")
    g.add_argument("--round-timeout", type=float, metavar="S",
                   help="seconds before a silent site counts as dropped out (3600; 0 = no "
                   "limit)")
    g = s.add_argument_group("method (defaults are the paper's)")
    g.add_argument("--latent-dim", type=_positive(int), metavar="L", help="latent dim (128)")
    g.add_argument("--width", type=_positive(float), metavar="W", help="channel multiplier (1)")
    g.add_argument("--downsample", type=_positive(int), metavar="F", help="grid factor (1)")
    g.add_argument("--lr", type=_positive(float), help="Adam learning rate (1e-3, as vaefusion)")
    g.add_argument("--beta", type=float,
                   help="KL weight (vaefusion's default, 0.25; the paper's ELBO is 1)")
    g.add_argument("--likelihood", choices=LIKELIHOODS, help="decoder likelihood")
    g.add_argument("--batch-subjects", type=_positive(int), metavar="B",
                   help="whole subjects per batch (1)")
    g.add_argument("--seed", type=int, help="random seed (0)")
    g.add_argument("--folds", type=int, metavar="K",
                   help="within-site stratified K-fold, 0 = leave-one-site-out only (5)")
    g.add_argument("--classifier-c", type=_positive(float), metavar="C",
                   help="inverse L2 strength of the logistic regression (1)")
    g.add_argument("--classifier-rounds", type=_positive(int), metavar="N",
                   help="most federated L-BFGS rounds of the classifier (100)")
    g = s.add_argument_group("inputs (as vaefusion's)")
    g.add_argument("--n-components", type=_positive(int), metavar="N",
                   help="ICN components per subject (53)")
    g.add_argument("--label-column", help="participants.tsv column (diagnosis)")
    g.add_argument("--positive-label", help="patient value (SZ)")
    g.add_argument("--negative-label", help="control value (HC)")
    g.add_argument("--skip-bids-validation", action="store_true", default=None,
                   help="do not validate the sites' datasets")
    g.add_argument("--device", choices=DEVICES, help="auto, cpu or cuda (auto)")
    s.add_argument("-v", "--verbose", action="count", default=0,
                   help="NVFlare's full log on the console")
    return p


def settings_from_args(args: argparse.Namespace):
    from vaefusion.federated.settings import FederatedSettings

    base = (FederatedSettings.from_file(args.parameters) if args.parameters
            else FederatedSettings())
    given = {k: getattr(args, k) for k in _SETTINGS if getattr(args, k, None) is not None}
    settings = dataclasses.replace(base, **given)
    settings.validate(len(args.site_dirs))
    return settings


def check_sites(site_dirs: list[Path], out: Path) -> list[Path]:
    """Every SITE_DIR is a BIDS dataset, none twice, and OUT is not inside one."""
    resolved = [d.expanduser().resolve() for d in site_dirs]
    for i, d in enumerate(resolved, 1):
        if not (d / "dataset_description.json").is_file():
            raise MissingInputError(f"SITE_DIR {i} ({d}) is not a BIDS dataset (no "
                                    f"dataset_description.json); give each site's dataset root.")
        if out == d or d in out.parents:
            raise UsageError(f"--out {out} is inside SITE_DIR {i} ({d}); inputs are never "
                             f"written to, so choose a folder outside it.")
    if len(set(resolved)) != len(resolved):
        raise UsageError("a SITE_DIR is given twice; give each site's dataset once.")
    return resolved


def simulate(args: argparse.Namespace) -> int:
    try:
        import nvflare  # noqa: F401
    except ImportError:
        raise VaefusionError("NVIDIA FLARE is not installed; install the federated extra: "
                             "pip install 'vaefusion[federated]'.", EXIT_FAILURE) from None
    from vaefusion.derivatives import federated as names
    from vaefusion.flare.simulate import run_simulation, site_names

    out = args.out.expanduser().resolve()
    sites = check_sites(args.site_dirs, out)
    settings = settings_from_args(args)
    work = args.work_dir.expanduser().resolve() if args.work_dir else out / names.WORK
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / names.LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s [%(levelname)s] %(message)s"))
    LOG.addHandler(handler)
    try:
        summary = run_simulation(settings, sites, out, work,
                                 "full" if args.verbose else "concise")
    finally:
        LOG.removeHandler(handler)
        handler.close()
    ev = summary["evaluation"]
    print(f"\nvaefusion-federated: {summary['rounds_completed']} round(s) over "
          f"{sum(v['status'] == 'included' for v in summary['sites'].values())} of "
          f"{len(site_names(len(sites)))} site(s)")
    for key, label in (("leave_one_site_out", "leave-one-site-out"),
                       ("within_site_kfold", "within-site K-fold")):
        res = ev[key]
        auc = res.get("pooled_auc")
        text = f"{auc:.3f}" if auc is not None else f"not run ({res.get('skipped')})"
        print(f"  pooled ROC-AUC, {label}: {text}")
    print(f"  model: {names.model_dir(out)}\n  summary: {names.summary_file(out)}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Console script ``vaefusion-federated``; returns the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not LOG.handlers:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s",
                                               "%H:%M:%S"))
        LOG.addHandler(console)
    LOG.setLevel(logging.INFO)
    try:
        return simulate(args)
    except VaefusionError as exc:
        LOG.error("%s", exc.message)
        return exc.code
    except KeyboardInterrupt:
        LOG.error("Interrupted; rerun the same command to resume after the last round.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
