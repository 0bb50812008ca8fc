"""Federated vaefusion: FedAvg, federated evaluation, what crosses the network, bad sites.

Most tests run the whole protocol in this process (:mod:`vaefusion.federated.local`, the same
bytes as NVFlare); one runs ``vaefusion-federated simulate`` through NVFlare's simulator and
embeds new subjects with its model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import simulate
from vaefusion.errors import EXIT_DATA, EXIT_OK
from vaefusion.federated import codec
from vaefusion.federated.evaluation import SiteEvaluator, fold_part
from vaefusion.federated.fedavg import fedavg
from vaefusion.federated.local import Sent, run_in_process
from vaefusion.federated.messages import (
    CLASSIFY,
    EMBED,
    FINISH,
    PREPARE,
    REQUESTS,
    SCORE,
    SITE_MESSAGES,
    TRAIN,
    GlobalModel,
    LocalUpdate,
    SiteDone,
    SiteInfo,
)
from vaefusion.federated.server import FederationError
from vaefusion.federated.settings import FederatedSettings
from vaefusion.federated.site import SiteRunner
from vaefusion.inputs.cache import read_meta, write_subject

TINY = dict(rounds=2, local_epochs=1, latent_dim=4, width=0.125, downsample=2, n_components=4,
            folds=2, skip_bids_validation=True, lr=1e-3)


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def site_dirs(tmp_path_factory) -> list[Path]:
    """Three small BIDS datasets, 8 subjects each (4 SZ, 4 HC), one per site."""
    root = tmp_path_factory.mktemp("sites")
    return [simulate(root / f"s{i}", "--n-subjects", "8", "--seed", str(i), "--n-sites", "1")
            for i in (1, 2, 3)]


def preprocess(ds: Path, root: Path, *extra: str) -> list[Path]:
    from vaefusion.cli.run import main

    code = main([str(ds), str(root / "out"), "participant", "-w", str(root / "work"),
                 "--skip-bids-validation", "--n-components", "4", *extra])
    assert code == 0
    return sorted((root / "work" / "cache").glob("*.npy"))


@pytest.fixture(scope="module")
def caches(site_dirs, tmp_path_factory) -> list[list[Path]]:
    """Each site's preprocessed subjects (the participant level, run once)."""
    return [preprocess(ds, tmp_path_factory.mktemp(f"pre{i}")) for i, ds in enumerate(site_dirs)]


def runners(caches: list[list[Path]], root: Path) -> dict[str, SiteRunner]:
    # one thread each: sites and other tests share the machine's cores
    return {f"site-{i + 1}": SiteRunner(f"site-{i + 1}", None, root / f"s{i}" / "out",
                                        root / f"s{i}" / "work", cache_files=files, threads=1)
            for i, files in enumerate(caches)}


def settings(**kw) -> FederatedSettings:
    return FederatedSettings(**{**TINY, **kw})


# --------------------------------------------------------------------------- codec, FedAvg
def test_codec_round_trip_chunks_and_digest():
    w = {"big": np.arange(3 * 2**20, dtype=np.float32), "small": np.ones((2, 3), np.float32)}
    msg = GlobalModel(3, w)
    data = codec.encode(msg)
    chunks = codec.split(data)
    assert len(chunks) == 2 and all(len(c) <= codec.CHUNK_BYTES for c in chunks)
    back = codec.decode(codec.join(chunks, codec.digest(data)))
    assert back.round == 3 and all(np.array_equal(back.weights[k], w[k]) for k in w)
    with pytest.raises(codec.CodecError, match="digest"):
        codec.join(chunks[:1] + [chunks[1][:-1] + b"x"], codec.digest(data))
    with pytest.raises(TypeError, match="cannot travel"):
        codec.encode(GlobalModel(0, {"w": torch.zeros(2)}))  # tensors must become arrays
    with pytest.raises(codec.CodecError):
        codec.decode(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")


def test_fedavg_weights_by_volumes_and_is_exact_for_one_site():
    a = LocalUpdate("a", 0, {"w": np.array([1.0, 2.0], np.float32)}, 10, 1, 0, 0, 0, 1)
    b = LocalUpdate("b", 0, {"w": np.array([4.0, 8.0], np.float32)}, 30, 1, 0, 0, 0, 1)
    assert np.allclose(fedavg([a, b])["w"], [3.25, 6.5])
    odd = dataclasses.replace(a, weights={"w": np.array([0.1, 1 / 3], np.float32)})
    assert fedavg([odd])["w"].tobytes() == odd.weights["w"].tobytes()


# --------------------------------------------------------------------------- evaluation
class FeatureSite:
    """A site whose "embedding" is given features: isolates the federated classifier."""

    def __init__(self, name: str, x: np.ndarray, y: np.ndarray, seed: int) -> None:
        self.name, self.x, self.y, self.seed = name, x, y, seed
        self.evaluator: SiteEvaluator | None = None

    def handle(self, task, req):
        if task == PREPARE:
            return SiteInfo(self.name, len(self.y), 5 * len(self.y), int(self.y.sum()),
                            int((1 - self.y).sum()), ["ICN01", "GMV"], [9, 11, 9], [18, 21, 18])
        if task == TRAIN:
            return LocalUpdate(self.name, req.round, req.weights, 5 * len(self.y), 1, 1.0, 1.0,
                               0.0, 1.0)
        if task == EMBED:
            self.evaluator = SiteEvaluator(self.name, self.x, self.y, req.folds, self.seed)
            return self.evaluator.moments()
        if task == CLASSIFY:
            from vaefusion.federated.messages import SiteGradients

            return SiteGradients(self.name, req.step, self.evaluator.gradients(req.fits))
        if task == SCORE:
            from vaefusion.federated.messages import SiteScores

            return SiteScores(self.name, self.evaluator.scores(req.fits))
        return SiteDone(self.name, 0)


def test_federated_classifier_reaches_the_pooled_logistic_regression(tmp_path):
    """Leave-one-site-out and within-site K-fold AUCs equal scikit-learn's on pooled data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    data = {}
    for i, n in enumerate((12, 16, 10)):
        y = np.tile([0, 1], n // 2)
        x = rng.normal(size=(n, 6)) + 0.8 * y[:, None] * np.array([1, 0.5, 0, 0, 0, 0]) + i
        data[f"site-{i + 1}"] = (x, y)
    sites = {k: FeatureSite(k, x, y, 7) for k, (x, y) in data.items()}
    s = settings(rounds=1, latent_dim=2, folds=2, seed=7, classifier_rounds=200)
    result = run_in_process(s, sites, tmp_path / "out")

    def pooled_auc(train_x, train_y, test_x, test_y):
        scaler = StandardScaler().fit(train_x)
        lr = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-12, max_iter=10_000)
        lr.fit(scaler.transform(train_x), train_y)
        return roc_auc_score(test_y, lr.decision_function(scaler.transform(test_x)))

    for held, (x, y) in data.items():
        tx = np.vstack([v[0] for k, v in data.items() if k != held])
        ty = np.concatenate([v[1] for k, v in data.items() if k != held])
        assert result.loso.per_site[held]["auc"] == pytest.approx(pooled_auc(tx, ty, x, y))
    u = pairs = 0.0
    for k in range(2):
        parts = {n: sites[n].evaluator.fold_of == k for n in sites}
        tx = np.vstack([data[n][0][~m] for n, m in parts.items()])
        ty = np.concatenate([data[n][1][~m] for n, m in parts.items()])
        for n, m in parts.items():
            yk = data[n][1][m]
            u += pooled_auc(tx, ty, data[n][0][m], yk) * yk.sum() * (1 - yk).sum()
            pairs += yk.sum() * (1 - yk).sum()
    assert result.kfold.pooled_auc == pytest.approx(u / pairs)
    assert result.summary["evaluation"]["unconverged_fits"] == []


# --------------------------------------------------------------------------- equivalence
def test_one_site_fedavg_equals_centralised_training(caches, tmp_path):
    """One site, one local epoch per round: the same weights as 3 centralised epochs, bit for
    bit on CPU (FedAvg over one site is exact, and the site's Adam state and RNG carry over
    between rounds as they do between epochs)."""
    from vaefusion.training.trainer import Trainer

    s = settings(rounds=3, folds=0)
    cfg = s.site_config(tmp_path, tmp_path / "c_out", tmp_path / "c_work")
    assert cfg.scaling == "maxabs"  # whatever the default: the server's network has no scaling
    cfg.omp_nthreads = 1  # as the site's
    cfg = cfg.resolve()
    central = Trainer(cfg, cfg.runtime(), s.latent_dim, s.seed, caches[0], [], tmp_path / "c")
    for _ in range(3):
        central.run_epoch()
    result = run_in_process(s, runners(caches[:1], tmp_path), tmp_path / "fed")
    expected = central.get_weights()
    assert result.weights.keys() == expected.keys()
    assert all(torch.equal(torch.from_numpy(np.array(result.weights[k])), expected[k])
               for k in expected)
    losses = [h.train_loss for h in central.history]
    assert [r.sites["site-1"] for r in result.history] == losses


# --------------------------------------------------------------------------- message content
def _schema(value, path=""):
    """The leaves of a message as (path, kind, shape or length): what could scale with the
    data. Lists of message parts (one per fold, per active fit or per test part) are entered
    without their length, which counts folds or fits, not subjects."""
    if dataclasses.is_dataclass(value):
        out = {(path, type(value).__name__, None)}
        for f in dataclasses.fields(value):
            out |= _schema(getattr(value, f.name), f"{path}.{f.name}")
        return out
    if isinstance(value, np.ndarray):
        return {(path, "array", value.shape)}
    if isinstance(value, dict):
        return {x for k, v in value.items() for x in _schema(v, f"{path}[{k}]")}
    if isinstance(value, list):
        if all(dataclasses.is_dataclass(v) for v in value):
            return {x for v in value for x in _schema(v, f"{path}[]")}
        return {(path, "list", len(value))} | {x for i, v in enumerate(value)
                                                for x in _schema(v, f"{path}[{i}]")}
    return {(path, type(value).__name__, None)}


def _part_types(value):
    if dataclasses.is_dataclass(value):
        yield type(value).__name__
        for f in dataclasses.fields(value):
            yield from _part_types(getattr(value, f.name))
    elif isinstance(value, list):
        for v in value:
            yield from _part_types(v)


def _arrays(value):
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _arrays(getattr(value, f.name))
    elif isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v)
    elif isinstance(value, list):
        for v in value:
            yield from _arrays(v)


def _record(caches, root, s):
    sent: list[Sent] = []
    sites = runners(caches, root)
    run_in_process(s, sites, root / "out", recorder=sent.append)
    return sent, sites


def test_no_image_latent_label_or_score_leaves_a_site(caches, tmp_path):
    """Every message is inspected: sites send only the allowed types; nothing in them scales
    with the number of subjects (two runs, site-1 with 8 and with 6 subjects, give messages of
    identical shapes); no array is an image; no subject's features appear in any message."""
    s = settings(rounds=1)
    sent, sites = _record(caches, tmp_path / "a", s)
    assert {m.task for m in sent} == {PREPARE, TRAIN, EMBED, CLASSIFY, SCORE, FINISH}
    for m in sent:
        if m.sender == "server":
            assert isinstance(m.message, REQUESTS[m.task])
        else:
            assert isinstance(m.message, SITE_MESSAGES) and m.message.site == m.sender
            # the only parts a site message holds: aggregates per fold, per fit, per test part
            assert set(_part_types(m.message)) <= {type(m.message).__name__, "PartMoments",
                                                   "FitGradient", "PartScore"}
    # fewer subjects at site-1 (one patient, one control less): same message shapes
    metas = [read_meta(f) for f in caches[0]]
    drop = [next(f for f, m in zip(caches[0], metas, strict=True) if m.label == lab)
            for lab in ("SZ", "HC")]
    smaller = [[f for f in caches[0] if f not in drop], *caches[1:]]
    sent_small, _ = _record(smaller, tmp_path / "b", s)

    def site1(messages):
        return {(m.task, *leaf) for m in messages if m.sender == "site-1"
                for leaf in _schema(m.message)}
    assert site1(sent) == site1(sent_small)
    # images: no array with the grid's shape; subject features: no row of them anywhere
    evaluator = sites["site-1"].evaluator
    grids = {tuple(sites["site-1"].trainer.train_data.grid),
             tuple(read_meta(caches[0][0]).shape)}
    for m in sent:
        if m.sender == "server":
            continue
        for a in _arrays(m.message):
            assert tuple(a.shape[-3:]) not in grids
            flat = np.asarray(a, dtype=np.float64).ravel()
            for row in evaluator.x:
                hits = np.flatnonzero(np.isclose(flat, row[0], rtol=0, atol=1e-9))
                assert not any(np.allclose(flat[h:h + row.size], row) for h in hits
                               if h + row.size <= flat.size)
    # aggregates cover >= 3 subjects: each part is a whole fold
    for m in sent:
        if m.task == EMBED and m.sender != "server":
            assert all(p.n >= 3 for p in m.message.parts)
            assert [p.part for p in m.message.parts] == [fold_part(0), fold_part(1)]


# --------------------------------------------------------------------------- bad sites
def _one_class(files: list[Path], label: str) -> list[Path]:
    return [f for f in files if read_meta(f).label == label]


def test_site_without_patients_is_named(caches, tmp_path):
    bad = [caches[0], caches[1], _one_class(caches[2], "HC")]
    with pytest.raises(FederationError) as err:
        run_in_process(settings(rounds=1), runners(bad, tmp_path), tmp_path / "out")
    assert err.value.code == EXIT_DATA
    assert "site-3 at prepare" in err.value.message and "0 SZ and 4 HC" in err.value.message
    assert "--min-sites" in err.value.message


def _drop_gmv(files: list[Path], folder: Path) -> list[Path]:
    """The same subjects without their GMV volume (a site that lacks that modality)."""
    out = []
    for f in files:
        meta = read_meta(f)
        stack = np.load(f)[:-1]
        out.append(write_subject(folder, stack, dataclasses.replace(
            meta, modalities=meta.modalities[:-1])))
    return out


def test_sites_with_different_modalities_or_grids_are_named(caches, site_dirs, tmp_path):
    bad = [caches[0], caches[1], _drop_gmv(caches[2], tmp_path / "nogm")]
    with pytest.raises(FederationError, match=r"site-3 at prepare: has modalities 4 volumes"):
        run_in_process(settings(rounds=1), runners(bad, tmp_path / "a"), tmp_path / "out")
    coarse = simulate(tmp_path / "coarse", "--n-subjects", "8", "--seed", "4", "--n-sites", "1",
                      "--icn-res", "12")
    other_grid = preprocess(coarse, tmp_path / "pre")
    with pytest.raises(FederationError, match=r"site-2 at prepare: has grid 14x16x13 where "
                                              r"site-1, site-3 have 18x21x18"):
        run_in_process(settings(rounds=1), runners([caches[0], other_grid, caches[2]],
                                                   tmp_path / "b"), tmp_path / "out2")


def test_a_site_missing_a_modality_in_its_bids_data_is_named(site_dirs, tmp_path):
    ds = tmp_path / "nogm"
    shutil.copytree(site_dirs[1], ds)
    shutil.rmtree(ds / "derivatives" / "spm")
    sites = {f"site-{i}": SiteRunner(f"site-{i}", d, tmp_path / f"o{i}", tmp_path / f"w{i}",
                                     threads=1)
             for i, d in ((1, site_dirs[0]), (2, ds))}
    # no selection was given: missing input, naming where the site looked (exit 66)
    with pytest.raises(FederationError, match="site-2 at prepare: No subject with both "
                                              "NeuroMark ICN maps and a GMV volume"):
        run_in_process(settings(rounds=1), sites, tmp_path / "out")


class DropsOut:
    """A site whose process ends when round ``at`` (0-based) starts."""

    def __init__(self, site: SiteRunner, at: int) -> None:
        self.site, self.at = site, at

    def handle(self, task, req):
        if task == TRAIN and req.round == self.at:
            raise ConnectionError("connection reset")
        return self.site.handle(task, req)


def test_a_site_dropping_out_stops_the_run_or_is_excluded_with_min_sites(caches, tmp_path):
    sites = runners(caches, tmp_path / "a")
    sites["site-2"] = DropsOut(sites["site-2"], at=1)
    with pytest.raises(FederationError, match=r"site-2 at train: no reply \(connection reset"):
        run_in_process(settings(), sites, tmp_path / "out")

    sites = runners(caches, tmp_path / "b")
    sites["site-2"] = DropsOut(sites["site-2"], at=1)
    result = run_in_process(settings(min_sites=2), sites, tmp_path / "out2")
    summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert summary["sites"]["site-2"]["status"] == "excluded"
    assert summary["sites"]["site-2"]["stage"] == "train"
    assert [sorted(h["sites"]) for h in summary["loss_per_round"]] == [
        ["site-1", "site-2", "site-3"], ["site-1", "site-3"]]
    assert sorted(result.loso.per_site) == ["site-1", "site-3"]
    assert (tmp_path / "out2" / "model" / "model.json").is_file()


def test_rounds_resume_after_an_interruption(caches, tmp_path):
    """A run stopped after round 1 (a site dropped) and rerun continues at round 2 and ends
    with the weights of an uninterrupted run."""
    full = run_in_process(settings(folds=0), runners(caches[:2], tmp_path / "full"),
                          tmp_path / "full_out")
    sites = runners(caches[:2], tmp_path / "cut")
    sites["site-2"] = DropsOut(sites["site-2"], at=1)
    with pytest.raises(FederationError):
        run_in_process(settings(folds=0), sites, tmp_path / "cut_out")
    # a new process: new site objects, the same work folders
    resumed = run_in_process(settings(folds=0), runners(caches[:2], tmp_path / "cut"),
                             tmp_path / "cut_out")
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in full.history]
    assert all(np.array_equal(resumed.weights[k], full.weights[k]) for k in full.weights)


# --------------------------------------------------------------------------- settings
def test_parameters_json_is_checked(tmp_path):
    path = tmp_path / "parameters.json"
    path.write_text(json.dumps({"rounds": 3, "latent_dims": 8}))
    from vaefusion.errors import UsageError

    with pytest.raises(UsageError, match="unknown setting.*latent_dims"):
        FederatedSettings.from_file(path)
    path.write_text(json.dumps({"rounds": "3"}))
    with pytest.raises(UsageError, match="rounds = '3' is not a valid value"):
        FederatedSettings.from_file(path)
    with pytest.raises(UsageError, match="--min-sites 4 exceeds"):
        FederatedSettings(min_sites=4).validate(3)


def test_neuroflame_computation_files_agree_with_the_package():
    from vaefusion.flare.job import neuroflame_configs

    root = Path(__file__).resolve().parents[1] / "platforms" / "neuroflame"
    server, client = neuroflame_configs()
    assert json.loads((root / "app/config/config_fed_server.json").read_text()) == server
    assert json.loads((root / "app/config/config_fed_client.json").read_text()) == client
    FederatedSettings.from_file(root / "parameters.json").validate()
    manifest = json.loads((root / ".neuroflame.json").read_text())
    dockerfile = (root / "Dockerfile").read_text()
    assert f'org.opencontainers.image.title="{manifest["image"]["title"]}"' in dockerfile
    assert "org.neuroflame.nvflare.version=\"2.8.0\"" in dockerfile


def test_cli_refuses_bad_options_and_missing_sites(tmp_path, capsys):
    from vaefusion.cli.federated import main as federated
    from vaefusion.errors import EXIT_NO_INPUT, EXIT_USAGE

    with pytest.raises(SystemExit) as err:
        federated(["simulate", str(tmp_path), "--out", str(tmp_path / "o"), "--rounds", "0"])
    assert err.value.code == EXIT_USAGE
    pytest.importorskip("nvflare")
    code = federated(["simulate", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert code == EXIT_NO_INPUT
    assert not (tmp_path / "o").exists()  # nothing is created for a refused run


# --------------------------------------------------------------------------- NVFlare
def test_simulate_with_nvflare_then_embed_with_its_model(site_dirs, tmp_path):
    """``vaefusion-federated simulate`` on 3 sites through NVFlare's simulator, with a 4th
    site that lacks GMV and is excluded by ``--min-sites 3``; the model embeds new subjects
    with ``vaefusion BIDS OUT participant --model OUT/model``."""
    pytest.importorskip("nvflare")
    from vaefusion.cli.federated import main as federated
    from vaefusion.cli.run import main as vaefusion

    bad = tmp_path / "nogm"
    shutil.copytree(site_dirs[0], bad)
    shutil.rmtree(bad / "derivatives" / "spm")
    out = tmp_path / "fed"
    code = federated(["simulate", *map(str, site_dirs), str(bad), "--out", str(out),
                      "--downsample", "2", "--width", "0.125", "--latent-dim", "4", "--rounds",
                      "2", "--local-epochs", "1", "--n-components", "4", "--folds", "2",
                      "--skip-bids-validation", "--min-sites", "3"])
    assert code == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and len(summary["loss_per_round"]) == 2
    assert [v["status"] for v in summary["sites"].values()] == ["included"] * 3 + ["excluded"]
    assert "GMV" in summary["sites"]["site-4"]["reason"]
    assert (out / "sites" / "site-4" / "derivatives" / ".neuroflame_error.json").is_file()
    assert 0 <= summary["evaluation"]["leave_one_site_out"]["pooled_auc"] <= 1
    assert sorted(summary["evaluation"]["within_site_kfold"]["per_site"]) == [
        "site-1", "site-2", "site-3"]
    for site in ("site-1", "site-2", "site-3"):  # each site keeps what the server sent
        assert (out / "sites" / site / "derivatives" / "federated" / "model" /
                "model.json").is_file()
    new = simulate(tmp_path / "new", "--n-subjects", "3", "--seed", "9", "--n-sites", "1")
    code = vaefusion([str(new), str(tmp_path / "emb"), "participant", "-w",
                      str(tmp_path / "w"), "--skip-bids-validation", "--n-components", "4",
                      "--model", str(out / "model")])
    assert code == 0
    latents = sorted((tmp_path / "emb").glob("sub-*/sub-*_desc-vae_latents.tsv"))
    assert len(latents) == 3
