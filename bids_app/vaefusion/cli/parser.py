"""The command-line parser (BIDS-Apps positional arguments plus fMRIPrep-style options).

A usage mistake exits with code 64 (not argparse's 2), and an unknown analysis level with 17,
as the BIDS execution spec asks; neither prints a traceback.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import NoReturn

from vaefusion import __version__
from vaefusion.config import CLASSIFIERS, DEVICES, LIKELIHOODS, MISSING_POLICIES, SCALINGS
from vaefusion.errors import EXIT_CODES, EXIT_USAGE
from vaefusion.evaluation.methods import METHODS

ANALYSIS_LEVELS = ("participant", "group")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # noqa: D102 - argparse hook
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _label(value: str) -> str:
    """Strip an optional ``sub-``/``ses-`` prefix."""
    for prefix in ("sub-", "ses-"):
        if value.startswith(prefix):
            return value[len(prefix):]
    return value


def _derivative(value: str) -> tuple[str, str]:
    if "=" in value:
        name, path = value.split("=", 1)
    else:
        path = value
        name = Path(value).name
    if not name or not path:
        raise argparse.ArgumentTypeError(f"'{value}' is not NAME=PATH")
    return name, path


def _finite(value: str) -> float:
    """A float that is a number: NaN and infinity are refused (exit 64) for every option."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"'{value}' is not a finite number")
    return number


def _positive(value: str) -> float:
    number = _finite(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"'{value}' must be above 0")
    return number


def _memory(value: str) -> float:
    """``--mem`` in GB: ``16`` (a bare number is GB, as before), ``16G``, ``16GB``,
    ``16000M``, ``16000MB``, ``1T``; as SLURM reads them, the units are binary (``M`` is
    1/1024 G), and a GB is 2^30 bytes wherever vaefusion counts memory."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", value)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"'{value}' is not a memory amount; give e.g. 16G, 16000M or 16 (GB)")
    number = _positive(match.group(1))
    return number * _MEMORY_UNITS[match.group(2).upper()]


#: GB per unit of ``--mem`` (none: GB)
_MEMORY_UNITS = {"": 1.0, "K": 2.0**-20, "M": 2.0**-10, "G": 1.0, "T": 2.0**10}


def _int_at_least(value: str, low: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not an integer") from None
    if number < low:
        raise argparse.ArgumentTypeError(f"'{value}' must be at least {low}")
    return number


def _positive_int(value: str) -> int:
    return _int_at_least(value, 1)


def _non_negative_int(value: str) -> int:
    return _int_at_least(value, 0)


def build_parser() -> argparse.ArgumentParser:
    """The ``vaefusion`` argument parser. Every option here appears in boutiques.json."""
    epilog = "exit codes:\n" + "\n".join(f"  {c:>3}  {d}" for c, d in EXIT_CODES.items())
    p = _Parser(
        prog="vaefusion",
        description="Fuse NeuroMark ICN maps and gray-matter volumes with one shared 3D VAE, "
        "and evaluate schizophrenia-vs-control classification against PCA baselines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
        # no prefix matching: a typo (--epoch) is an error, and names stay stable as options grow
        allow_abbrev=False,
    )
    p.add_argument("bids_dir", type=Path, help="the root of the input BIDS dataset")
    p.add_argument("output_dir", type=Path, help="where the BIDS-Derivatives output goes")
    p.add_argument("analysis_level",
                   help="participant (preprocess/embed) or group (train, evaluate)")
    p.add_argument("--version", action="version", version=f"vaefusion {__version__}")
    p.add_argument("--boutiques", action="store_true",
                   help="print the Boutiques descriptor of this app and exit")

    g = p.add_argument_group("data selection")
    g.add_argument("--participant-label", "--participant_label", nargs="+", type=_label,
                   default=None, metavar="LABEL", help="subjects to process (with or without "
                   "sub-); @FILE reads labels from FILE (whitespace or one a line, # comments)")
    g.add_argument("--session-label", "--session_label", nargs="+", type=_label, default=None,
                   metavar="LABEL", help="sessions to process (with or without ses-); @FILE "
                   "reads them from FILE")
    g.add_argument("--bids-filter-file", type=Path, default=None, metavar="FILE",
                   help="JSON of pybids filters per input: {\"icn\": {...}, \"gmv\": {...}}")
    g.add_argument("--derivatives", nargs="+", action="extend", type=_derivative, default=None,
                   metavar="NAME=PATH", help="derivative datasets holding ICN maps and GMV "
                   "(default: every folder under BIDS_DIR/derivatives)")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation",
                   "--skip_bids_validator", action="store_true",
                   default=None, help="do not validate the input dataset")
    g.add_argument("--missing-modality", choices=MISSING_POLICIES, default=None,
                   help="a subject lacking a modality is skipped (default), kept with what it "
                   "has (embedded, not classified), or an error")
    g.add_argument("--n-components", type=_positive_int, default=None, metavar="N",
                   help="expected number of ICN components per subject (default 53)")
    g.add_argument("--icn-order", type=Path, default=None, metavar="FILE",
                   help="text file: the NeuroMark component (1-based) of each ICN volume, in "
                   "file order, e.g. for GIFT's sorted output (default: template order)")
    g.add_argument("--label-column", default=None, help="participants.tsv column (diagnosis)")
    g.add_argument("--positive-label", default=None, help="patient value (SZ)")
    g.add_argument("--negative-label", default=None, help="control value (HC)")
    g.add_argument("--diagnosis-map", type=Path, default=None, metavar="FILE",
                   help="JSON mapping participants.tsv values to labels, e.g. {\"sz\": \"SZ\"}")

    g = p.add_argument_group("execution")
    g.add_argument("-w", "--work-dir", type=Path, default=None, metavar="DIR",
                   help="work directory, resumable (default: OUTPUT_DIR/../<OUTPUT_DIR "
                   "name>_work, or $TMPDIR/vaefusion_work_<uid>_<hash> where that cannot be "
                   "created; never the current directory)")
    g.add_argument("--nprocs", "--nthreads", "--n-cpus", type=_positive_int, default=None,
                   help="processes for nipype MultiProc")
    g.add_argument("--omp-nthreads", type=_positive_int, default=None,
                   help="threads per process for torch and BLAS (default: CPUs / nprocs)")
    g.add_argument("--mem", "--mem-gb", dest="mem_gb", type=_memory, default=None,
                   metavar="MEM", help="memory the run may use, for nipype scheduling and the "
                   "training budgets: 16G, 16GB, 16000M, or a bare number of GB (default: the "
                   "available memory, cgroup limit included; more is refused)")
    g.add_argument("--use-plugin", type=Path, default=None, metavar="FILE",
                   help="nipype plugin YAML (e.g. SLURM)")
    g.add_argument("--config-file", type=Path, default=None, metavar="FILE",
                   help="TOML configuration (as every run writes to "
                   "OUTPUT_DIR/logs/config-<level>-<run id>.toml)")
    g.add_argument("--device", choices=DEVICES, default=None,
                   help="auto (CUDA if present), cpu, cuda")
    g.add_argument("--gpus", default=None, metavar="IDS",
                   help="GPUs for concurrent units, round robin: all (default) or ids as "
                   "CUDA_VISIBLE_DEVICES takes them (e.g. 0,2), among the GPUs it leaves "
                   "visible")
    g.add_argument("--bf16", action="store_true", default=None,
                   help="bf16 autocast for training on CUDA (default: on where the GPU "
                   "supports it; bf16 = false in --config-file turns it off)")
    g.add_argument("--stop-on-first-crash", action="store_true", default=None,
                   help="stop at the first crashed node")
    g.add_argument("--dry-run", action="store_true", default=None,
                   help="validate, discover and print the selection (subjects, modalities, "
                   "per-class counts), the memory estimate and the planned units, then exit 0 "
                   "without writing anything")
    g.add_argument("-v", "--verbose", action="count", default=None, help="more log output")

    g = p.add_argument_group(
        "method (default in brackets: [paper] from the seed paper, [ours] chosen here where the "
        "paper gives none; see the README)")
    g.add_argument("--latent-dim", dest="latent_dims", nargs="+", type=_positive_int,
                   default=None, metavar="L", help="latent dimension(s); the first is the "
                   "headline of summary.json, never the best after the fact ([paper] 128)")
    g.add_argument("--seed", "--random-seed", dest="seeds", nargs="+", type=int, default=None,
                   metavar="S", help="seed(s) of the initialisation and sampling (VAE weights, "
                   "data order, pca-shared projection), not of the folds ([ours] 0; the paper's "
                   "seed experiment used 5 seeds, e.g. --seed 0 1 2 3 4)")
    g.add_argument("--folds", type=int, default=None, metavar="K",
                   help="cross-validation folds ([paper] 10)")
    g.add_argument("--cv-seed", type=int, default=None, metavar="S",
                   help="seed of the K-fold partition; repeat r uses S + r ([ours] 0)")
    g.add_argument("--cv-repeats", type=_positive_int, default=None, metavar="R",
                   help="repeat the K-fold with R partitions; the AUC CIs use all K x R folds "
                   "([ours] 1)")
    g.add_argument("--cv-groups", default=None, metavar="COLUMN",
                   help="test folds made of whole groups of this participants.tsv column, e.g. "
                   "site: leave-one-group-out when it has exactly K groups, groups dealt to K "
                   "stratified folds when it has more ([ours] unset: stratified K-fold)")
    g.add_argument("--svm-c", type=_positive, default=None, metavar="C",
                   help="fix the linear SVM's C ([ours] unset: C chosen per fold by inner "
                   "5-fold CV on the training subjects over 1e-4 ... 1e2, for every method)")
    g.add_argument("--classifier", choices=CLASSIFIERS, default=None,
                   help="the classifier of every method's features: the paper's linear SVM, or "
                   "an L1 logistic regression; C by the same inner CV ([paper] svm)")
    g.add_argument("--permutations", type=_non_negative_int, default=None, metavar="P",
                   help="label permutations of each AUC's null, the same for every method; "
                   "the p value is (1 + #null >= AUC) / (1 + P); 0: none ([ours] 100)")
    g.add_argument("--epochs", type=_positive_int, default=None,
                   help="maximum epochs ([ours] 200)")
    g.add_argument("--patience", type=_positive_int, default=None,
                   help="early-stopping patience in epochs ([ours] 20)")
    g.add_argument("--batch-subjects", type=_positive_int, default=None, metavar="B",
                   help="whole subjects per training batch ([ours] 1)")
    g.add_argument("--lr", type=_positive, default=None, help="Adam learning rate ([ours] 1e-3)")
    g.add_argument("--beta", type=_finite, default=None,
                   help="KL weight ([ours] 0.25; the paper's ELBO is 1)")
    g.add_argument("--likelihood", choices=LIKELIHOODS, default=None,
                   help="[ours] decoder likelihood: volume = a calibrated variance per volume "
                   "over the brain mask (each map's error counts relative to its own size), "
                   "mask = one calibrated variance shared over the brain mask, sigma = one "
                   "shared over the whole box (Rybkin et al. 2021), unit = the fixed unit "
                   "variance of earlier versions, which collapses the posterior on data in "
                   "[-1, 1] (volume; the paper's objective is sigma)")
    g.add_argument("--scaling", choices=SCALINGS, default=None,
                   help="[ours] what the network sees and draws: maxabs = the max-abs scaled "
                   "volumes (the paper's), voxelwise = each voxel standardised by its "
                   "modality's mean and SD over the fold's training subjects, the decoder "
                   "drawing the departure from the mean map (voxelwise; the paper's is "
                   "maxabs)")
    g.add_argument("--kl-warmup", type=int, default=None, metavar="E",
                   help="[ours] raise the KL weight linearly from beta/E to beta over the "
                   "first E epochs (0 = none; 0)")
    g.add_argument("--free-bits", type=_finite, default=None, metavar="NATS",
                   help="[ours] free bits: a latent dimension's KL below NATS costs NATS "
                   "(Kingma et al. 2016; 0 = none; 0)")
    g.add_argument("--width", type=_positive, default=None, metavar="W",
                   help="channel multiplier ([paper] 1.0; e.g. 0.125 for CPU demos)")
    g.add_argument("--downsample", type=_positive_int, default=None, metavar="F",
                   help="integer grid factor for the VAE and the PCA baselines alike ([paper] 1, "
                   "3 mm; e.g. 4 for CPU demos)")
    g.add_argument("--augment", action="store_true", default=None,
                   help="TorchIO augmentation of training volumes")
    g.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="a trained model: embed with it instead of training")
    g.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                   help="methods to evaluate (all); pca-late (one PCA per modality) is the "
                   "paper's \"early fusion PCA\" row, see the README")

    g = p.add_argument_group("interpretation (figures, maps and the HTML reports)")
    g.add_argument("--explain-fold", type=int, default=None, metavar="K",
                   help="the fold whose model (of the first latent dim and seed) the maps, "
                   "t-SNE and reports explain ([paper] 0, the first fold)")
    return p
