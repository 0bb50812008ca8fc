"""Shared fixtures: tiny simulated BIDS datasets (coarse grid, few components)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

#: Cost knobs that keep every end-to-end run to seconds.
TINY_SIM = ["--icn-res", "9", "--gm-res", "4.5", "--n-components", "4"]
TINY_GROUP = ["--downsample", "2", "--width", "0.125", "--epochs", "2", "--folds", "3",
              "--latent-dim", "4", "--n-components", "4", "--skip-bids-validation"]


def simulate(out: Path, *args: str) -> Path:
    from vaefusion.cli.simulate import main

    code = main([str(out), *TINY_SIM, *args])
    assert code == 0, f"vaefusion-simulate failed with {code}"
    return out


@pytest.fixture(scope="session")
def tiny_bids(tmp_path_factory) -> Path:
    """A read-only 8-subject dataset with BIDS names (shared: copy it before changing it)."""
    ds = simulate(tmp_path_factory.mktemp("sim") / "ds", "--n-subjects", "8", "--seed", "1")
    make_read_only(ds)
    return ds


@pytest.fixture(scope="session")
def tiny_native(tmp_path_factory) -> Path:
    """The same kind of dataset with GIFT/SPM native names."""
    return simulate(tmp_path_factory.mktemp("simn") / "ds", "--n-subjects", "6", "--seed", "2",
                    "--naming", "native")


@pytest.fixture
def writable_copy(tiny_bids, tmp_path) -> Path:
    """A private, writable copy of the tiny dataset (for corrupting files)."""
    dst = tmp_path / "ds"
    shutil.copytree(tiny_bids, dst)
    for root, dirs, files in os.walk(dst):
        for name in dirs + files:
            p = Path(root) / name
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    dst.chmod(dst.stat().st_mode | stat.S_IWUSR)
    return dst


def make_read_only(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode & ~0o222)
    for dirpath, _, _ in sorted(os.walk(root), reverse=True):
        p = Path(dirpath)
        p.chmod(p.stat().st_mode & ~0o222)


#: Strongly planted effects for the interpretation tests (test_interpret, test_reports,
#: test_generate): ICN02 and ICN03 reduced in patients, among 16 ICNs and GMV.
PLANTED = ("ICN02", "ICN03")
PLANTED_COMPONENTS = 16
#: A VAE that learns on the tiny grid: the calibrated likelihood, no downsampling (18x21x18),
#: lr 1e-3 and 40 epochs without early stopping. Measured once with these settings (and never
#: retuned): all 4 units active, KL 7.5 nats per volume, the ICN maps drawn as blobs at their
#: peaks (a subject report's r 0.35 to 0.38 against the noisy inputs). At 8 epochs the decoded
#: group difference did not follow the planted effect (r -0.03 and 0.01); at 40 the planted
#: ICNs lead every ICN. (Max-abs, as measured: with these settings a voxelwise network's
#: posterior was still collapsed at epoch 35 of fold 0.)
PLANTED_GROUP = ["--downsample", "1", "--width", "0.125", "--epochs", "40", "--patience", "40",
                 "--lr", "1e-3",
                 "--folds", "3", "--latent-dim", "4", "--n-components", str(PLANTED_COMPONENTS),
                 "--skip-bids-validation", "--likelihood", "sigma", "--beta", "1",
                 "--scaling", "maxabs",
                 "--methods", "vae",
                 "pca-shared", "--seed", "1",
                 # the three folds train side by side, one thread each: on a 2-core machine the
                 # small 3-D convolutions gain more from two processes than from two threads
                 "--nprocs", "2"]


@pytest.fixture(scope="session")
def planted_bids(tmp_path_factory) -> Path:
    """24 subjects with strong planted ICN02/ICN03 effects and a third of the default noise
    (read-only): what the interpretation must find when the effect is clean."""
    ds = simulate(tmp_path_factory.mktemp("planted") / "ds", "--n-subjects", "24", "--seed",
                  "3", "--n-components", str(PLANTED_COMPONENTS), "--icn-effect",
                  "2:-0.6:10", "--icn-effect", "3:-0.6:10", "--effect-size", "1.5",
                  "--noise", "0.3")
    make_read_only(ds)
    return ds


@pytest.fixture(scope="session")
def planted_run(planted_bids, tmp_path_factory) -> Path:
    """The output folder of a trained group run on ``planted_bids`` (work dir: ``../work``),
    shared by every module that needs one (trained once per session)."""
    from vaefusion.cli.run import main

    out = tmp_path_factory.mktemp("planted_out") / "out"
    code = main([str(planted_bids), str(out), "group", "-w", str(out.parent / "work"),
                 *PLANTED_GROUP])
    assert code == 0
    return out
