"""A federation that survives a bad site, and sites that refuse a curious server (issue 25).

Any malformed message is a ``CodecError`` (fuzzed); a site that sends one is excluded with a
named reason; non-finite weights or losses and a volume count other than declared exclude a
site for the round; a server that asks beyond the protocol is refused by every site.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from test_federated import (  # noqa: F401 (module fixtures)
    FeatureSite,
    caches,
    runners,
    settings,
    site_dirs,
)
from vaefusion.errors import UsageError
from vaefusion.federated import codec
from vaefusion.federated.guard import MAX_EFFECTIVE_COEF
from vaefusion.federated.local import run_in_process
from vaefusion.federated.messages import (
    CLASSIFY,
    EMBED,
    PREPARE,
    SCORE,
    TRAIN,
    ClassifierStep,
    EvalRequest,
    FitGradient,
    FitParams,
    LocalUpdate,
    PartMoments,
    PrepareRequest,
    ScoreRequest,
    SiteFailure,
    SiteGradients,
    SiteInfo,
    SiteMoments,
)
from vaefusion.federated.server import FederationError
from vaefusion.federated.settings import MAX_CLASSIFIER_ROUNDS

_SAMPLES = [
    LocalUpdate("s", 1, {"w": np.ones((2, 3), np.float32), "n": np.array(3)}, 10, 1, 0.5, 0.4,
                0.1, 1.0),
    SiteMoments("s", 2, [PartMoments("fold0", 4, 2, 2, np.ones(2), np.ones(2))]),
    SiteGradients("s", 0, [FitGradient("loso:a", 4, 4.0, 2.0, np.zeros(2), 0.1)]),
    SiteInfo("s", 8, 40, 4, 4, ["ICN01", "GMV"], [9, 11, 9], [18, 21, 18]),
    SiteFailure("s", TRAIN, "why"),
]


def _body(msg: object) -> tuple[dict, dict]:
    arrays: dict = {}
    return codec._flatten(msg, arrays), arrays


def _mutate(value, rng):
    """One leaf of a message description replaced by a value of another kind."""
    junk = [None, "x", -1, 10**30, 1.5, [], {}, {"__array__": "nope"}, {"__type__": "Evil"},
            {"__type__": 5}, [[[]]], True, float("nan")]
    if isinstance(value, dict) and value:
        key = list(value)[rng.integers(len(value))]
        if rng.random() < 0.3:
            return {k: v for k, v in value.items() if k != key}  # a field missing
        return {**value, key: _mutate(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = int(rng.integers(len(value)))
        return value[:i] + [_mutate(value[i], rng)] + value[i + 1:]
    return junk[rng.integers(len(junk))]


def _decodes_or_codec_error(data) -> None:
    try:
        msg = codec.decode(data)
    except codec.CodecError:
        return
    assert dataclasses.is_dataclass(msg), msg


def test_decoder_fuzz_raises_only_codec_error():
    """Flipped, cut and appended bytes, and descriptions with fields of every wrong kind:
    decoding gives a message or raises CodecError, never another exception."""
    rng = np.random.default_rng(0)
    for msg in _SAMPLES:
        data = codec.encode(msg)
        assert codec.decode(data) is not None
        for _ in range(150):
            raw = bytearray(data)
            for i in rng.integers(0, len(raw), rng.integers(1, 8)):
                raw[i] = int(rng.integers(256))
            _decodes_or_codec_error(bytes(raw))
            _decodes_or_codec_error(data[:int(rng.integers(len(data)))])
            _decodes_or_codec_error(data + bytes(rng.integers(0, 256, 5, dtype=np.uint8)))
            body, arrays = _body(msg)
            bad = st_save(arrays, metadata={"vaefusion_message": json.dumps(_mutate(body, rng))})
            _decodes_or_codec_error(bad)
    for data in (None, "text", 12, b"", b"\xff" * 8, st_save({}, metadata={"x": "y"}),
                 st_save({}, metadata={"vaefusion_message": "{not json"}),
                 st_save({}, metadata={"vaefusion_message": "[1, 2]"})):
        with pytest.raises(codec.CodecError):
            codec.decode(data)
    with pytest.raises(codec.CodecError, match="not a list of bytes"):
        codec.join(["text"])


def test_decoder_checks_every_field_type():
    body, arrays = _body(_SAMPLES[0])
    body["n_volumes"] = "10"
    with pytest.raises(codec.CodecError, match="LocalUpdate.n_volumes is a str"):
        codec.decode(st_save(arrays, metadata={"vaefusion_message": json.dumps(body)}))
    body, arrays = _body(_SAMPLES[0])
    body["weights"]["w"] = [1, 2]
    with pytest.raises(codec.CodecError, match="LocalUpdate.weights"):
        codec.decode(st_save(arrays, metadata={"vaefusion_message": json.dumps(body)}))


# --------------------------------------------------------------------------- bad sites
class Faulty:
    """A site that answers TRAIN with NaN weights ("nan"), a wrong volume count ("volumes") or
    bytes cut in half ("garbage"); everything else as the wrapped site."""

    def __init__(self, site, fault: str) -> None:
        self.site, self.fault = site, fault

    def handle(self, task, req):
        reply = self.site.handle(task, req)
        if task != TRAIN or isinstance(reply, SiteFailure):
            return reply
        if self.fault == "garbage":
            data = codec.encode(reply)
            return data[:len(data) // 2]  # cut in the middle of its arrays
        if self.fault == "volumes":
            return dataclasses.replace(reply, n_volumes=reply.n_volumes * 100)
        weights = {k: (np.full_like(v, np.nan) if v.dtype.kind == "f" else v)
                   for k, v in reply.weights.items()}
        return dataclasses.replace(reply, weights=weights, train_loss=float("nan"))


def test_nan_site_and_malformed_site_are_excluded(caches, tmp_path, caplog):  # noqa: F811
    """The federated simulation of the issue: site-2 sends NaN weights every round, site-3 a
    malformed message; the run finishes with site-1 (and site-2's evaluation answers), and
    summary.json names both, each with its reason."""
    sites = runners(caches, tmp_path / "a")
    sites["site-2"] = Faulty(sites["site-2"], "nan")
    sites["site-3"] = Faulty(sites["site-3"], "garbage")
    with caplog.at_level(logging.WARNING, "vaefusion.federated"):
        result = run_in_process(settings(min_sites=1), sites, tmp_path / "out")
    ending = caplog.messages[-3:]  # the run's end names both
    assert ending[0].startswith("site site-2 was left out of round 1: it sent non-finite")
    assert any(m.startswith("site site-3 was excluded at train: sent an unreadable message")
               for m in caplog.messages)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    s2, s3 = summary["sites"]["site-2"], summary["sites"]["site-3"]
    assert s3["status"] == "excluded" and s3["stage"] == "train"
    assert s3["reason"].startswith("sent an unreadable message (")
    assert [e["round"] for e in s2["excluded_rounds"]] == [1, 2]
    assert s2["excluded_rounds"][0]["reason"].startswith("sent non-finite weights (")
    assert [sorted(h["sites"]) for h in summary["loss_per_round"]] == [["site-1"], ["site-1"]]
    assert all(np.isfinite(v).all() for v in result.weights.values() if v.dtype.kind == "f")
    assert (tmp_path / "out" / "model" / "model.json").is_file()
    # without --min-sites every site is required: the run stops, naming the malformed one
    sites = runners(caches, tmp_path / "b")
    sites["site-3"] = Faulty(sites["site-3"], "garbage")
    with pytest.raises(FederationError, match="site-3 at train: sent an unreadable message"):
        run_in_process(settings(rounds=1), sites, tmp_path / "out2")


def _feature_sites(n_sites: int = 3) -> dict[str, FeatureSite]:
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 6)
    return {f"site-{i + 1}": FeatureSite(f"site-{i + 1}", rng.normal(size=(12, 4)) + y[:, None],
                                         y, 3) for i in range(n_sites)}


def test_a_volume_count_other_than_declared_sits_the_round_out(tmp_path):
    sites = _feature_sites()
    sites["site-2"] = Faulty(sites["site-2"], "volumes")
    run_in_process(settings(rounds=2, min_sites=2, latent_dim=2, classifier_rounds=50), sites,
                   tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["sites"]["site-2"]["status"] == "included"  # evaluated, not averaged
    assert summary["sites"]["site-2"]["excluded_rounds"] == [
        {"round": r, "reason": "sent 6000 volumes as its weight where it declared 60"}
        for r in (1, 2)]
    with pytest.raises(FederationError, match="round 1: site-2: sent 6000 volumes") as err:
        run_in_process(settings(rounds=1, latent_dim=2), {**_feature_sites(), "site-2": Faulty(
            _feature_sites()["site-2"], "volumes")}, tmp_path / "out2")
    assert err.value.code == 65


# --------------------------------------------------------------------------- a curious server
@pytest.fixture(scope="module")
def prepared(caches, tmp_path_factory):  # noqa: F811
    """site-1 prepared and embedded as an honest server would leave it (folds 2, 3 steps)."""
    root = tmp_path_factory.mktemp("curious")
    site = runners(caches, root)["site-1"]
    s = settings(classifier_rounds=3)
    assert isinstance(site.handle(PREPARE, PrepareRequest(s, ["site-1", "site-2"])), SiteInfo)
    weights = {k: v.numpy() for k, v in site.trainer.get_weights().items()}
    return site, s, weights


def _fit(site, name="kfold:0", **change) -> FitParams:
    n = site._sd.size
    base = dict(fit=name, mean=np.zeros(n), scale=np.ones(n), coef=np.zeros(n), intercept=0.0,
                class_weight=[1.0, 1.0])
    return FitParams(**{**base, **change})


def _refused(reply, fragment: str) -> None:
    assert isinstance(reply, SiteFailure), reply
    assert "refuses" in reply.reason and fragment in reply.reason, reply.reason


def test_a_curious_server_is_refused(prepared):
    """Every attack of docs/federated.md ("A curious server"), each refused by the site."""
    site, s, weights = prepared
    sites = ["site-1", "site-2"]
    ok = site.handle(EMBED, EvalRequest(weights, s.folds, sites))
    assert isinstance(ok, SiteMoments)
    refusal = site.handle(EMBED, EvalRequest(weights, 3, sites))
    assert refusal.code == 65  # bad data from the server's side
    # another partition: other folds, or a second prepare with another seed
    _refused(site.handle(EMBED, EvalRequest(weights, 3, sites)), "asked for 3 folds")
    _refused(site.handle(PREPARE, PrepareRequest(dataclasses.replace(s, seed=9), sites)),
             "another partition")
    # the evaluation again without a site having left, or with other weights
    _refused(site.handle(EMBED, EvalRequest(weights, s.folds, sites)), "no site left")
    other = {k: v + 1 if v.dtype.kind == "f" else v for k, v in weights.items()}
    _refused(site.handle(EMBED, EvalRequest(other, s.folds, ["site-1"])), "other weights")
    # a fit the run does not have; huge coefficients; a tiny scale (a huge coefficient too)
    _refused(site.handle(CLASSIFY, ClassifierStep(0, [_fit(site, "kfold:7")])), "'kfold:7'")
    n = site._sd.size
    big = np.zeros(n)
    big[0] = 2 * MAX_EFFECTIVE_COEF / max(site._sd[0], 1e-12)
    _refused(site.handle(CLASSIFY, ClassifierStep(0, [_fit(site, coef=big)])), "coefficients")
    tiny = np.ones(n)
    tiny[0] = 1e-12
    _refused(site.handle(CLASSIFY, ClassifierStep(0, [_fit(site, scale=tiny,
                                                          coef=np.full(n, 0.5))])),
             "coefficients")
    _refused(site.handle(CLASSIFY, ClassifierStep(0, [_fit(site, scale=np.zeros(n))])),
             "scale of 0")
    _refused(site.handle(CLASSIFY, ClassifierStep(0, [_fit(site, intercept=float("inf"))])),
             "non-finite")


def test_the_standardisation_steps_and_scores_are_bounded(prepared):
    site, s, weights = prepared
    # a new embedding (a site left): the counters start over, with one standardisation
    assert isinstance(site.handle(EMBED, EvalRequest(weights, s.folds, ["site-1"])),
                      SiteMoments)
    assert isinstance(site.handle(CLASSIFY, ClassifierStep(0, [_fit(site)])), SiteGradients)
    moved = _fit(site, mean=np.full(site._sd.size, 0.1))
    _refused(site.handle(CLASSIFY, ClassifierStep(1, [moved])), "changed the standardisation")
    # two more answered steps make the run's 3 (--classifier-rounds), then none
    for step in (1, 2):
        assert isinstance(site.handle(CLASSIFY, ClassifierStep(step, [_fit(site)])),
                          SiteGradients)
    _refused(site.handle(CLASSIFY, ClassifierStep(4, [_fit(site)])), "--classifier-rounds 3")
    assert not isinstance(site.handle(SCORE, ScoreRequest([_fit(site)])), SiteFailure)
    _refused(site.handle(SCORE, ScoreRequest([_fit(site)])), "scores a second time")


def test_settings_bound_the_classifier():
    from vaefusion.federated.settings import FederatedSettings

    FederatedSettings(classifier_rounds=MAX_CLASSIFIER_ROUNDS).validate()
    with pytest.raises(UsageError, match="--classifier-rounds 1001 must be from 1 to 1000") as err:
        FederatedSettings(classifier_rounds=MAX_CLASSIFIER_ROUNDS + 1).validate()
    assert err.value.code == 64
    with pytest.raises(UsageError, match="--classifier-c 1000000.0 must be positive and at most"):
        FederatedSettings(classifier_c=1e6).validate()


class NanGradients(FeatureSite):
    def handle(self, task, req):
        reply = super().handle(task, req)
        if task == CLASSIFY:
            return dataclasses.replace(reply, fits=[dataclasses.replace(
                g, grad_coef=np.full_like(g.grad_coef, np.nan)) for g in reply.fits])
        return reply


def test_non_finite_gradients_exclude_the_site(tmp_path):
    sites = _feature_sites()
    sites["site-3"] = NanGradients("site-3", sites["site-3"].x, sites["site-3"].y, 3)
    result = run_in_process(settings(rounds=1, min_sites=2, latent_dim=2), sites,
                            tmp_path / "out")
    entry = result.summary["sites"]["site-3"]
    assert (entry["status"], entry["stage"], entry["reason"]) == (
        "excluded", "classify", "sent non-finite sums or gradients")
    assert sorted(result.loso.per_site) == ["site-1", "site-2"]  # evaluated again without it
