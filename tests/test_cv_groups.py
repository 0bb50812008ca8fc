"""``--cv-groups``: test folds of whole groups (leave-one-site-out), the same folds for every
method, and the refusals of docs/reliability.md (through the real CLI, before preprocessing)."""

from __future__ import annotations

import numpy as np
import pytest

from test_group import strong  # noqa: F401  (the 3-site dataset of the group tests)
from test_reliability import cli, expect
from vaefusion.config import Config
from vaefusion.errors import DataError, UsageError
from vaefusion.evaluation.folds import (
    describe_partition,
    make_folds,
    make_group_folds,
    make_partition,
)
from vaefusion.evaluation.manifest import Manifest


def _sites(n_sites: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` patients and as many controls at each of ``n_sites`` sites, interleaved
    so that no site is a block of rows."""
    y = np.tile([0, 1], n_sites * per_class)
    g = np.array([f"site{i % n_sites + 1}" for i in range(y.size // 2) for _ in (0, 1)])
    return y, g


def _check_whole_groups(folds, y: np.ndarray, g: np.ndarray) -> None:
    tested = np.concatenate([f.test for f in folds])
    assert np.array_equal(np.sort(tested), np.arange(y.size)), "every subject tested once"
    for f in folds:
        held = set(g[f.test])
        assert held.isdisjoint(g[f.fit]), "a group is split between test and training"
        assert set(np.flatnonzero(np.isin(g, list(held)))) == set(f.test)
        assert set(y[f.test]) == {0, 1} and set(y[f.val]) == {0, 1}
        assert not set(f.train) & set(f.val)


def test_leave_one_site_out_tests_each_site_once():
    y, g = _sites(3, 4)
    folds = make_group_folds(y, g, 3, seed=0, column="site")
    _check_whole_groups(folds, y, g)
    assert [set(g[f.test]) for f in folds] == [{"site1"}, {"site2"}, {"site3"}]
    # the seed moves only the validation split, never which site is tested
    other = make_group_folds(y, g, 3, seed=5, column="site")
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, other, strict=True))


def test_more_groups_than_folds_deals_whole_groups():
    y, g = _sites(7, 3)
    a = make_group_folds(y, g, 3, seed=0, column="site", repeats=2)
    b = make_group_folds(y, g, 3, seed=1, column="site", repeats=2)
    for folds in (a, b):
        assert len(folds) == 3
        _check_whole_groups(folds, y, g)
    assert [set(g[f.test]) for f in a] != [set(g[f.test]) for f in b], "seed: another deal"
    again = make_group_folds(y, g, 3, seed=0, column="site")
    assert all(np.array_equal(x.test, z.test) and np.array_equal(x.val, z.val)
               for x, z in zip(a, again, strict=True))


def test_every_method_reads_the_same_group_partition():
    """crossval.partition (what the VAE and every PCA unit read) is make_partition, which
    under --cv-groups gives the group folds, whatever --seed is."""
    from vaefusion.evaluation.crossval import partition

    y, g = _sites(3, 4)
    manifest = Manifest(files=[f"{i}.npy" for i in range(y.size)],
                        keys=[f"sub-{i:02d}" for i in range(y.size)], labels=list(y),
                        modalities=["a"], groups=list(g))
    for seed in ([0], [3]):
        cfg = Config(folds=3, cv_groups="site", seeds=seed)
        ours = partition(manifest, cfg, 0)
        want = make_group_folds(y, g, 3, seed=0, column="site")
        assert all(np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val)
                   for a, b in zip(ours, want, strict=True))
    plain = partition(manifest, Config(folds=3), 0)
    assert all(np.array_equal(a.test, b.test)
               for a, b in zip(plain, make_folds(y, 3, 0), strict=True))


def test_group_partition_refusals():
    y, g = _sites(3, 4)
    with pytest.raises(DataError, match="fewer than --folds 4; set --folds 3"):
        make_group_folds(y, g, 4, seed=0, column="site")
    with pytest.raises(DataError, match="same value"):
        make_group_folds(y, np.full(y.size, "site1"), 2, seed=0, column="site")
    with pytest.raises(UsageError, match="--cv-repeats 2") as info:
        make_group_folds(y, g, 3, seed=0, column="site", repeats=2)
    assert info.value.code == 64
    one_class = g.copy()
    one_class[(g == "site1") & (y == 0)] = "site2"  # site1: patients only
    with pytest.raises(DataError, match=r"test fold 0 \(site site1\) holds 4 patient\(s\) "
                                        r"and 0 control\(s\)"):
        make_group_folds(y, one_class, 3, seed=0, column="site")
    # a held-out site that leaves too few to train and validate on
    big = np.where(np.arange(y.size) < 22, "site1", "site2")
    with pytest.raises(DataError, match=r"Holding out site site1 \(fold 0\) leaves 2 "):
        make_group_folds(y, big, 2, seed=0, column="site")
    with pytest.raises(ValueError):
        make_partition(y, None, Config(folds=3, cv_groups="site"), 0)


def test_memory_check_sizes_the_largest_site_fold(tmp_path, monkeypatch):
    """Leave-one-site-out folds are uneven: --mem is checked against the largest training
    set (two small sites held out: 25 of 30), not the stratified n - n/K (20)."""
    from vaefusion.evaluation import memory
    from vaefusion.inputs.cache import SubjectMeta, write_subject

    npy = write_subject(tmp_path, np.zeros((2, 4, 4, 4), np.float32),
                        SubjectMeta("01", None, ["ICN01", "GMV"], np.eye(4).tolist(), [4, 4, 4]))
    y = np.tile([0, 1], 15)
    groups = ["site1"] * 20 + ["site2"] * 5 + ["site3"] * 5
    manifest = Manifest([str(npy)] * 30, [f"sub-{i:02d}" for i in range(30)], list(y),
                        ["ICN01", "GMV"], groups)
    seen = []
    monkeypatch.setattr(memory, "group_needs",
                        lambda methods, sizes: seen.append(sizes.n_fit) or [])
    for cv_groups in ("site", None):
        cfg = Config(mem_gb=16.0, nprocs=1, device="cpu", omp_nthreads=1, folds=3,
                     cv_groups=cv_groups).resolve()
        memory.check_group_memory(cfg, manifest, [])
    assert seen == [25, 20]

def test_partition_is_described():
    assert describe_partition(3, 1, "site", 3) == "leave-one-site-out, 3 folds"
    assert describe_partition(5, 2, "site", 12) == "site-grouped 5-fold (12 sites), 2 repeats"
    assert describe_partition(10, 1) == "stratified 10-fold"


def test_empty_cv_groups_is_a_usage_error():
    with pytest.raises(UsageError, match="--cv-groups needs a participants.tsv column"):
        Config(cv_groups=" ").validate()


# ---------------------------------------------------- the CLI: refused before preprocessing
# tiny_bids: site1 holds 3 patients only, site2 2 controls only, site3 1 + 2; sex F/M mixed


def test_cv_groups_column_missing(tiny_bids, tmp_path, caplog):
    expect(cli(tiny_bids, tmp_path, "group", "--folds", "3", "--cv-groups", "scanner"), 65,
           caplog, "has no 'scanner' column for --cv-groups (columns: participant_id, "
           "diagnosis, age, sex, site)")
    assert not (tmp_path / "work" / "cache").exists(), "refused only after preprocessing"


def test_cv_groups_one_class_site(tiny_bids, tmp_path, caplog):
    expect(cli(tiny_bids, tmp_path, "group", "--folds", "3", "--cv-groups", "site"), 65,
           caplog, "--cv-groups site: test fold 0 (site site1) holds 3 patient(s) and 0 "
           "control(s), so its ROC-AUC is undefined")
    assert not (tmp_path / "work" / "cache").exists()


def test_cv_groups_fewer_groups_than_folds(tiny_bids, tmp_path, caplog):
    expect(cli(tiny_bids, tmp_path, "group", "--folds", "3", "--cv-groups", "sex"), 65,
           caplog, "--cv-groups sex has 2 groups in participants.tsv (F, M), fewer than "
           "--folds 3; set --folds 2 for leave-one-sex-out.")


def test_cv_groups_single_group(writable_copy, tmp_path, caplog):
    tsv = writable_copy / "participants.tsv"
    lines = tsv.read_text().splitlines()
    tsv.write_text("\n".join([lines[0] + "\tscanner", *(f"{x}\tprisma" for x in lines[1:])])
                   + "\n")
    expect(cli(writable_copy, tmp_path, "group", "--folds", "2", "--cv-groups", "scanner"),
           65, caplog, "--cv-groups scanner: every classified subject has the same value "
           "(prisma)")


def test_cv_groups_blank_value(writable_copy, tmp_path, caplog):
    tsv = writable_copy / "participants.tsv"
    tsv.write_text(tsv.read_text().replace("\tsite3\n", "\tn/a\n", 1))
    expect(cli(writable_copy, tmp_path, "group", "--folds", "2", "--cv-groups", "site"), 65,
           caplog, "gives no 'site' value for sub-06; fill in column 'site'")


def test_cv_groups_leave_one_out_with_repeats(tiny_bids, tmp_path, caplog):
    expect(cli(tiny_bids, tmp_path, "group", "--folds", "2", "--cv-groups", "sex",
               "--cv-repeats", "2"), 64, caplog,
           "--cv-repeats 2 with --cv-groups sex and --folds 2 repeats the same "
           "leave-one-sex-out partition; use --cv-repeats 1.")


# ------------------------------------------------------------------ end to end (slow)
@pytest.mark.slow
def test_leave_site_out_group_run_beside_stratified(strong, tmp_path):  # noqa: F811
    """A leave-one-site-out group run (3 sites) and, beside it in another output folder, a
    stratified one on the same work dir: the second reuses the participant level, and each
    says which partition it used; every method is scored on the same site folds."""
    import csv
    import json

    from conftest import TINY_GROUP
    from vaefusion.cli.run import main
    from vaefusion.disk import naming

    work = tmp_path / "work"
    code = main([str(strong), str(tmp_path / "site"), "group", "-w", str(work), *TINY_GROUP,
                 "--cv-groups", "site", "--methods", "vae", "pca-late", "pca-shared"])
    assert code == 0
    group = tmp_path / "site" / "group"
    summary = json.loads((group / "summary.json").read_text())
    assert summary["cv_groups"] == "site"
    assert summary["partition"] == "leave-one-site-out, 3 folds"
    report = naming.group_report(tmp_path / "site").read_text()
    assert "Partition: leave-one-site-out, 3 folds." in report
    with open(group / "metrics.tsv", newline="") as fh:
        metrics = list(csv.DictReader(fh, delimiter="\t"))
    assert {r["method"] for r in metrics} == {"vae", "pca-late", "pca-shared"}
    for r in metrics:  # fold i tests site i + 1, for every method
        assert r["test_group"] == f"site{int(r['fold']) + 1}"
    sites = {}
    for line in (strong / "participants.tsv").read_text().splitlines()[1:]:
        cells = line.split("\t")
        sites[cells[0]] = cells[-1]
    with open(group / "decision_scores.tsv", newline="") as fh:
        scores = list(csv.DictReader(fh, delimiter="\t"))
    tested = {}
    for r in scores:
        assert sites[r["participant_id"]] == f"site{int(r['fold']) + 1}"
        tested.setdefault(r["method"], []).append(r["participant_id"])
    assert all(sorted(t) == sorted(sites) for t in tested.values()), "each tested once"

    cache = sorted((work / "cache").glob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in cache]
    code = main([str(strong), str(tmp_path / "strat"), "group", "-w", str(work), *TINY_GROUP,
                 "--methods", "pca-late"])
    assert code == 0
    assert [p.stat().st_mtime_ns for p in cache] == stamps, "participant level not reused"
    other = json.loads((tmp_path / "strat" / "group" / "summary.json").read_text())
    assert other["cv_groups"] is None and other["partition"] == "stratified 3-fold"
