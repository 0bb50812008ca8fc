"""The HTML reports and figures of a group run, the descriptions.tsv, the validator, and the
assembler's guarantees (escaped text, no external URL)."""

from __future__ import annotations

import base64
import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import PLANTED_GROUP
from vaefusion.reports import html

FIGURES = {"importance", "tsne", "auc_by_latent_dim", "training_curves", "maps"}
SECTIONS = {"overview", "data", "classification", "table1", "seeds", "importance", "maps",
            "tsne", "training", "warnings", "subjects", "about"}


class _Refs(HTMLParser):
    """Every src/href of a page, and the ids of its sections."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()
        self.images = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [a[k] for k in ("src", "href") if a.get(k)]
        if tag == "section" and a.get("id"):
            self.ids.add(a["id"])
        self.images += tag == "img"


def parse(path: Path) -> _Refs:
    parser = _Refs()
    parser.feed(path.read_text())
    parser.close()
    return parser


def assert_self_contained(page: Path) -> _Refs:
    """Parses; every referenced file exists; images are embedded PNGs; no external URL."""
    refs = parse(page)
    for ref in refs.refs:
        assert not re.match(r"^([a-z]+:)?//", ref, re.I), f"{page.name} links to {ref}"
        if ref.startswith("#"):
            continue
        if ref.startswith("data:"):
            assert ref.startswith("data:image/png;base64,")
            assert base64.b64decode(ref.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
            continue
        assert (page.parent / ref).exists(), f"{page.name} references missing {ref}"
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page.read_text())
    assert "http://" not in text and "https://" not in text
    return refs


# --------------------------------------------------------------------------- the assembler
def test_assembler_escapes_and_refuses_urls():
    page = html.page("a <b>", "x & y", [html.Section("s", "S").add(
        html.para("<script>"), html.table([{"a": 1.23456, "b": None}], ["a", "b"]))])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "1.235" in page and "n/a" in page
    with pytest.raises(ValueError, match="local files"):
        html.link("https://example.org/x.png", "x")


# --------------------------------------------------------------------------- a group run
@pytest.mark.slow
def test_group_report_is_self_contained(planted_run):
    page = planted_run / "group" / "report.html"
    refs = assert_self_contained(page)
    assert SECTIONS <= refs.ids
    assert refs.images >= len(FIGURES)
    text = page.read_text()
    assert "vae_L4_seed1_rep0_fold0" in text  # which model the figures explain
    assert "ICN02" in text and "Subthalamus" in text
    for name in FIGURES:
        assert (planted_run / "group" / "figures" / f"{name}.png").stat().st_size > 1000
    # one seed (--seed 1): no seed figure of bars labelled 1 with SD 0, the page says so
    assert not (planted_run / "group" / "figures" / "seed_robustness.png").exists()
    assert "One seed was run (--seed 1)" in text
    # the verdict (VAE against pca-shared) opens the Overview, before the VAE's AUC alone
    overview = text.split('id="overview"', 1)[1].split('id="data"', 1)[0]
    assert "On this dataset the VAE " in overview
    assert overview.index("On this dataset the VAE ") < overview.index("VAE ROC-AUC")


@pytest.mark.slow
def test_subject_reports_at_the_root(planted_run):
    pages = sorted(planted_run.glob("sub-*.html"))
    assert [p.stem for p in pages] == [f"sub-{i:02d}" for i in range(1, 25)]
    refs = assert_self_contained(pages[0])
    assert refs.images == 2
    assert "../" not in " ".join(refs.refs)  # at the root, links go down into group/
    assert "group/report.html" in refs.refs


@pytest.mark.slow
def test_descriptions_list_every_desc_label(planted_run):
    with open(planted_run / "descriptions.tsv", newline="") as fh:
        known = {r["desc_id"] for r in csv.DictReader(fh, delimiter="\t")}
    used = {f"desc-{m}" for p in planted_run.rglob("*") if p.is_file()
            for m in re.findall(r"(?:^|_)desc-([A-Za-z0-9]+)", p.name)}
    assert used and used <= known, used - known
    assert json.loads((planted_run / "descriptions.json").read_text())["Description"]


@pytest.mark.slow
def test_output_with_reports_is_valid_bids(planted_run):
    from vaefusion.inputs.validation import find_validator, run_validator, validator_errors

    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed")
    assert validator_errors(run_validator(planted_run)) == []


@pytest.mark.slow
def test_explain_fold_picks_another_model(planted_bids, planted_run, tmp_path):
    """--explain-fold 2 reuses every trained fold and explains fold 2's model."""
    from vaefusion.cli.run import main

    out = tmp_path / "out"
    code = main([str(planted_bids), str(out), "group", "-w", str(planted_run.parent / "work"),
                 *PLANTED_GROUP, "--explain-fold", "2"])
    assert code == 0
    side = next((out / "group" / "maps").glob("*desc-decodedHCminusSZ*.json"))
    assert json.loads(side.read_text())["Fold"] == 2
    assert "vae_L4_seed1_rep0_fold2" in (out / "group" / "report.html").read_text()


def test_explain_fold_outside_the_folds_is_a_usage_error(tiny_bids, tmp_path, caplog):
    from vaefusion.cli.run import main

    code = main([str(tiny_bids), str(tmp_path / "out"), "group", "--folds", "3",
                 "--explain-fold", "3"])
    assert code == 64
    assert "--explain-fold 3" in caplog.text
    assert not (tmp_path / "out").exists()


def test_warns_when_the_explained_model_decodes_modalities_as_zeros(tmp_path):
    """The first training plateau (docs/method.md): a decoder that draws a modality as exact
    zeros is named in the report's warnings; one that draws every modality is not."""
    from types import SimpleNamespace

    from vaefusion.config import Config
    from vaefusion.reports.group_page import _warnings

    def warnings(decoded: np.ndarray) -> str:
        mask = np.ones((2, 2, 2), dtype=bool)
        maps = SimpleNamespace(modalities=["ICN01", "ICN02", "GMV"], decoded_negative=decoded,
                               decoded_difference=np.ones((3, 2, 2, 2)),
                               input_difference=np.ones((3, 2, 2, 2)), mask=mask)
        section = _warnings(Config(output_dir=tmp_path), SimpleNamespace(labels=[0, 1]), [],
                            SimpleNamespace(maps=maps))
        return section.render()

    drawn = np.full((3, 2, 2, 2), 0.1)
    assert "decodes" not in warnings(drawn)
    blank = drawn.copy()
    blank[:2] = 0.0
    text = warnings(blank)
    assert "decodes 2 of 3 modalities as all zeros (ICN01, ICN02)" in text


def _weak_maps(decoded_scale: float):
    """Maps whose decoded difference is ``decoded_scale`` of the input difference."""
    from types import SimpleNamespace

    mask = np.ones((2, 2, 2), dtype=bool)
    return SimpleNamespace(
        modalities=["ICN01", "GMV"], decoded_negative=np.full((2, 2, 2, 2), 0.1),
        decoded_difference=np.full((2, 2, 2, 2), decoded_scale), input_difference=np.ones(
            (2, 2, 2, 2)), mask=mask, negative="HC", positive="SZ", n_negative=4, n_positive=4,
        correlations=[0.0, 0.0], expected_correlations=[None, None],
        input_expected_correlations=[None, None], expected_difference=None)


def test_overview_opens_with_the_verdict_and_the_learning_warnings(tmp_path):
    """A newcomer reads the top of the report: the VAE-vs-baselines sentence and any learning
    warning come before the VAE's AUC alone."""
    from types import SimpleNamespace

    from vaefusion.config import Config
    from vaefusion.reports.group_page import _overview

    vae = SimpleNamespace(roc_auc_mean=0.6, roc_auc_ci=[0.4, 0.8], latent_dim=8, n_folds=3)
    summary = SimpleNamespace(methods={"vae": vae}, comparisons=[SimpleNamespace(
        baseline="pca-early", ci=[-0.5, -0.1], mean_difference=-0.3)])
    interp = SimpleNamespace(maps=_weak_maps(0.005), explained=None)
    text = _overview(Config(output_dir=tmp_path), summary, [], interp).render()
    verdict = text.index("On this dataset the VAE is worse than pca-early.")
    warning = text.index("The decoded group differences reach at most 0.005, 0.5% of the input")
    assert verdict < warning < text.index("VAE ROC-AUC 0.600")
    drawn = SimpleNamespace(maps=_weak_maps(0.5), explained=None)
    assert "decoded group differences" not in _overview(Config(output_dir=tmp_path), summary,
                                                        [], drawn).render()


def test_caveat_stands_beside_blank_decoded_maps(tmp_path):
    """Tiny decoded differences (a blank map on a ±1e-06 scale): the caveat is in the maps
    section, before the figure, not only in the Warnings far below."""
    from types import SimpleNamespace

    from vaefusion.reports.group_page import _maps

    files = SimpleNamespace(all=lambda: [], centres=tmp_path / "centres.tsv")
    interp = SimpleNamespace(maps=_weak_maps(1e-6), map_files=files, ranking=[],
                             figures={"maps": b"\x89PNG fake"})
    text = _maps(interp, tmp_path).render()
    caveat = text.index("The decoded group differences reach at most 1e-06")
    assert caveat < text.index("<img")
    interp.maps = _weak_maps(0.5)
    assert "reach at most" not in _maps(interp, tmp_path).render()


def test_one_seed_is_said_not_drawn():
    from types import SimpleNamespace

    from vaefusion.reports.group_page import _seeds

    result = SimpleNamespace(method="vae", seed=3, latent_dim=4, available=True, roc_auc=0.7)
    text = _seeds([{"method": "vae", "latent_dim": 4}], [result], 4,
                  SimpleNamespace(figures={})).render()
    assert "One seed was run (--seed 3)" in text and "SD over seeds" not in text


def test_overview_gathers_the_training_warnings_of_the_log(tmp_path, monkeypatch):
    """The trainer's "had not converged" warning of every fold: once, with the count, at the
    top of the Overview; other log warnings stay in the Warnings section."""
    from types import SimpleNamespace

    from vaefusion.config import Config
    from vaefusion.reports import group_page

    said = [f"{tmp_path}/work/training/vae_L8_seed0_rep0_fold{k}: ICN05 is decoded as zeros "
            f"(every voxel)." for k in range(3)]
    monkeypatch.setattr(group_page, "_log_warnings",
                        lambda cfg: [*said, "sub-07 lacks a modality (no GMV file found)"])
    text = group_page._overview(Config(output_dir=tmp_path),
                                SimpleNamespace(methods={}, comparisons=[]), [],
                                SimpleNamespace(maps=None, explained=None)).render()
    assert "3 training units: ICN05 is decoded as zeros (every voxel)." in text
    assert "lacks a modality" not in text


def test_overview_says_when_training_had_not_converged(tmp_path):
    """Read from the results (a rerun that reuses the folds logs no training)."""
    from types import SimpleNamespace

    from vaefusion.config import Config
    from vaefusion.reports.group_page import _overview

    def fold(best: int, stopped: bool):
        training = SimpleNamespace(best_epoch=best, epochs_run=20, stopped_early=stopped,
                                   active_units=4, recon_r2=0.1, likelihood="sigma",
                                   undrawn=[], recon_r2_subject=0.2, twin_r2_subject=0.1)
        return SimpleNamespace(method="vae", training=training)

    results = [fold(20, False), fold(20, False), fold(12, True)]
    empty = SimpleNamespace(methods={}, comparisons=[])
    text = _overview(Config(output_dir=tmp_path), empty, results,
                     SimpleNamespace(maps=None, explained=None)).render()
    assert "2 of 3 VAE folds kept their last epoch (20): training had not converged" in text
    assert "kept their last epoch" not in _overview(
        Config(output_dir=tmp_path), empty, [fold(12, True)],
        SimpleNamespace(maps=None, explained=None)).render()


def test_planted_modalities_are_listed_below_the_cut(tmp_path):
    """Simulated data: a planted modality ranked below the table's cut still gets its row, so
    its "r with truth" (and the input's) is never hidden; unplanted ones stay cut."""
    from types import SimpleNamespace

    from vaefusion.reports.group_page import SHOWN_ROWS, _maps

    n = SHOWN_ROWS + 5
    mods = [f"ICN{i:02d}" for i in range(1, n + 1)]
    truth = [float("nan")] * n
    truth[-1] = 0.42  # the last-ranked modality is the planted one
    maps = SimpleNamespace(
        modalities=mods, decoded_negative=np.zeros((n, 2, 2, 2)),
        decoded_difference=np.full((n, 2, 2, 2), 0.5), input_difference=np.ones((n, 2, 2, 2)),
        mask=np.ones((2, 2, 2), dtype=bool), negative="HC", positive="SZ", n_negative=4,
        n_positive=4, correlations=[0.1] * n, expected_correlations=truth,
        input_expected_correlations=[0.3 if t == t else float("nan") for t in truth],
        expected_difference=np.zeros((n, 2, 2, 2)))
    ranking = [SimpleNamespace(modality=m, rank=i + 1) for i, m in enumerate(mods)]
    files = SimpleNamespace(all=lambda: [], centres=tmp_path / "centres.tsv")
    interp = SimpleNamespace(maps=maps, map_files=files, ranking=ranking, figures={})
    text = _maps(interp, tmp_path).render()
    assert mods[-1] in text and "0.42" in text and "input r with truth" in text
    assert mods[-2] not in text  # below the cut and not planted
    assert "4 more in the decoded difference" in text
