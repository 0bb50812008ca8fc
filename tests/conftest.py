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
