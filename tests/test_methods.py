"""The method registry (issue 23): the VAE and the three PCA baselines are registered by name,
the CLI, the memory check, the workflow and the report read the registry, and a new baseline
is one class plus one registration line that then runs end to end through the group
workflow."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import TINY_GROUP
from vaefusion.cli.parser import build_parser
from vaefusion.cli.run import main
from vaefusion.errors import UsageError
from vaefusion.evaluation.memory import UnitSizes
from vaefusion.evaluation.methods import METHODS, Baseline, selected_methods
from vaefusion.reports.figures import method_colour


class ModalityMeans(Baseline):
    """The toy: each modality's mean value inside the mask; nothing to fit."""

    name = "toy-means"
    colour = "#ff7f0e"

    def describe(self, latent_dim: int, n_modalities: int) -> str:
        return f"{n_modalities} mean values"

    def features(self, load, n_subjects, fit_idx, latent_dim, *, grams=None, seed=0,
                 standardise=False):
        return np.stack([load(i).mean(axis=1) for i in range(n_subjects)])


def test_the_registry_holds_the_vae_and_the_three_baselines():
    assert list(METHODS) == ["vae", "pca-early", "pca-late", "pca-shared", "pca-gmv"]
    assert [m for m in METHODS if METHODS.get(m).per_fold] == ["vae"]
    action = next(a for a in build_parser()._actions if a.dest == "methods")
    assert list(action.choices) == list(METHODS)
    with pytest.raises(UsageError, match="--methods got pca-mid; choose from vae pca-early"):
        selected_methods(["vae", "pca-mid"])
    sizes = UnitSizes(n_subjects=20, n_fit=16, n_modalities=5, grid=(9, 11, 9),
                      batch_subjects=1, width=0.125, latent_dim=4, data_budget=2**30)
    needs = [m.memory_need(sizes) for m in selected_methods(list(METHODS))]
    assert [n.method for n in needs] == list(METHODS)
    assert all(n.fixed > 0 for n in needs)
    assert method_colour("vae") == "#d62728" and method_colour("nothing") == "grey"


def test_a_method_registered_by_path_is_imported_when_first_used():
    with METHODS.registered("test_methods:ModalityMeans", "toy-means") as method:
        assert isinstance(method, ModalityMeans) and list(METHODS)[-1] == "toy-means"
    assert "toy-means" not in METHODS
    with pytest.raises(ValueError, match="is called 'toy-means'"):
        with METHODS.registered("test_methods:ModalityMeans", "other-name"):
            pass
    assert "other-name" not in METHODS


@pytest.mark.slow
def test_a_toy_baseline_runs_end_to_end_through_the_group_workflow(tiny_bids, tmp_path):
    out = tmp_path / "out"
    # the one registration line, as evaluation/methods.py would hold it for a module of
    # its own (this one: tests/ is on the path)
    with METHODS.registered("test_methods:ModalityMeans", "toy-means"):
        assert "toy-means" in build_parser()._option_string_actions["--methods"].choices
        code = main([str(tiny_bids), str(out), "group", "-w", str(tmp_path / "work"),
                     *TINY_GROUP, "--latent-dim", "2", "--seed", "1",
                     "--methods", "toy-means", "pca-shared"])
    assert code == 0
    summary = json.loads((out / "group" / "summary.json").read_text())
    assert set(summary["methods"]) == {"toy-means", "pca-shared"}
    toy = summary["methods"]["toy-means"]
    assert toy["available"] and toy["n_folds"] == 3 and 0 <= toy["roc_auc_mean"] <= 1
    with open(out / "group" / "metrics.tsv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["method"] == "toy-means"]
    assert [r["fold"] for r in rows] == ["0", "1", "2"]
    assert "toy-means" in (out / "group" / "report.html").read_text()
