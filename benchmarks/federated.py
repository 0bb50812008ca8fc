"""Centralised against federated vaefusion on one simulated dataset split into 3 sites.

    python benchmarks/federated.py --quick        # CI: tiny grid, 2 rounds
    python benchmarks/federated.py                # larger sample, more rounds

One dataset is simulated with 3 acquisition sites (``vaefusion-simulate --n-sites 3``) and split
into one BIDS dataset per site; each site is preprocessed with the participant level. Then,
with the same settings and the same total number of epochs:

* **centralised**: one :class:`~vaefusion.training.trainer.Trainer` on every subject for
  ``rounds x local_epochs`` epochs; the subjects are embedded and evaluated with the same
  protocol as the federation, but on pooled features with scikit-learn
  (``StandardScaler`` + ``LogisticRegression(C=1, class_weight="balanced")``): leave one site
  out, and within-site stratified K-fold with the sites' own fold assignment;
* **federated**: FedAvg over the 3 sites (in this process, through the message codec, so the
  bytes are those NVFlare would carry) and the federated evaluation.

Both report the site-stratified pooled ROC-AUC (see :mod:`vaefusion.federated.evaluation`);
the federation also reports the bytes sent per training round and per classifier round.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from vaefusion.bench.split import split_by_column
from vaefusion.federated.evaluation import SiteEvaluator
from vaefusion.federated.local import Sent, run_in_process
from vaefusion.federated.messages import CLASSIFY, TRAIN
from vaefusion.federated.settings import FederatedSettings
from vaefusion.federated.site import SiteRunner, labelled
from vaefusion.inputs.cache import read_meta

SIM = ["--icn-res", "9", "--gm-res", "4.5", "--n-components", "8", "--n-sites", "3",
       "--icn-effect", "1:-0.8:20", "--icn-effect", "4:-0.8:20", "--gm-effect=-38,12,0:20:-0.5"]
QUICK = dict(n_subjects=36, rounds=2, local_epochs=1)
FULL = dict(n_subjects=90, rounds=10, local_epochs=2)


def settings(rounds: int, local_epochs: int, seed: int) -> FederatedSettings:
    return FederatedSettings(rounds=rounds, local_epochs=local_epochs, latent_dim=4,
                             width=0.125, downsample=2, lr=1e-3, likelihood="sigma",
                             n_components=8, folds=2, skip_bids_validation=True, seed=seed)


def prepare(root: Path, n_subjects: int, seed: int) -> dict[str, list[Path]]:
    """Simulate, split by site, preprocess each site; the cache files by site."""
    from vaefusion.cli.run import main as vaefusion
    from vaefusion.cli.simulate import main as simulate

    assert simulate([str(root / "pooled"), "--n-subjects", str(n_subjects), "--seed",
                     str(seed), "-q", *SIM]) == 0
    caches = {}
    for site, ds in split_by_column(root / "pooled", root / "sites").items():
        work = root / "work" / site
        assert vaefusion([str(ds), str(root / "out" / site), "participant", "-w", str(work),
                          "--skip-bids-validation", "--n-components", "8"]) == 0
        caches[site] = sorted((work / "cache").glob("*.npy"))
    return caches


def centralised(caches: dict[str, list[Path]], s: FederatedSettings, root: Path,
                threads: int = 0) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from vaefusion.training.inference import embed
    from vaefusion.training.trainer import Trainer

    files = [f for site in sorted(caches) for f in caches[site]]
    cfg = s.site_config(root, root / "central_out", root / "central_work")
    cfg.omp_nthreads = threads
    cfg = cfg.resolve()
    t0 = time.perf_counter()
    trainer = Trainer(cfg, cfg.runtime(), s.latent_dim, s.seed, files, [], root / "central")
    for _ in range(s.epochs):
        trainer.run_epoch()
    data = {}
    for site, site_files in sorted(caches.items()):
        idx, y = labelled([read_meta(f) for f in site_files], s)
        mus = embed(trainer.model, [site_files[i] for i in idx], trainer.device, s.downsample)
        ev = SiteEvaluator(site, mus.reshape(len(idx), -1), y, s.folds, s.seed)
        data[site] = (ev.x, ev.y, ev.fold_of)

    def fit_auc(train, test):
        x, y = np.vstack([t[0] for t in train]), np.concatenate([t[1] for t in train])
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=s.classifier_c, class_weight="balanced", max_iter=10_000)
        clf.fit(scaler.transform(x), y)
        tx, ty = test
        return (roc_auc_score(ty, clf.decision_function(scaler.transform(tx)))
                * ty.sum() * (1 - ty).sum(), ty.sum() * (1 - ty).sum())

    u = pairs = 0.0
    for held in data:
        a, b = fit_auc([(x, y) for k, (x, y, _) in data.items() if k != held], data[held][:2])
        u, pairs = u + a, pairs + b
    loso = u / pairs
    u = pairs = 0.0
    for k in range(s.folds):
        train = [(x[f != k], y[f != k]) for x, y, f in data.values()]
        for x, y, f in data.values():
            a, b = fit_auc(train, (x[f == k], y[f == k]))
            u, pairs = u + a, pairs + b
    return {"loso": loso, "kfold": u / pairs, "seconds": time.perf_counter() - t0,
            "final_loss": trainer.history[-1].train_loss}


def federated(caches: dict[str, list[Path]], s: FederatedSettings, root: Path,
              threads: int = 0) -> dict[str, float]:
    sent: list[Sent] = []
    sites = {name: SiteRunner(name, None, root / "fed" / name / "out",
                              root / "fed" / name / "work", cache_files=files,
                              threads=threads)
             for name, files in sorted(caches.items())}
    t0 = time.perf_counter()
    result = run_in_process(s, sites, root / "fed" / "server", recorder=sent.append)
    seconds = time.perf_counter() - t0
    by_task: dict[str, int] = defaultdict(int)
    for m in sent:
        by_task[m.task] += m.n_bytes
    ev = result.summary["evaluation"]
    return {"loso": result.loso.pooled_auc, "kfold": result.kfold.pooled_auc,
            "seconds": seconds, "final_loss": result.history[-1].train_loss,
            "bytes_per_training_round": by_task[TRAIN] / s.rounds,
            "bytes_per_classifier_round": by_task[CLASSIFY] / max(1, ev["classifier_rounds"]),
            "classifier_rounds": ev["classifier_rounds"], "bytes_total": sum(by_task.values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI size (36 subjects, 2 rounds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of both arms (0: every CPU; 1 on a busy machine)")
    args = p.parse_args(argv)
    size = QUICK if args.quick else FULL
    s = settings(size["rounds"], size["local_epochs"], args.seed)
    with tempfile.TemporaryDirectory(prefix="vaefusion-fedbench-") as tmp:
        root = Path(tmp)
        caches = prepare(root, size["n_subjects"], args.seed)
        central = centralised(caches, s, root, args.threads)
        fed = federated(caches, s, root, args.threads)
    counts = {k: len(v) for k, v in caches.items()}
    print(f"\n{size['n_subjects']} subjects in 3 sites {counts}; {s.rounds} rounds x "
          f"{s.local_epochs} local epoch(s) = {s.epochs} epochs; latent {s.latent_dim}, "
          f"width {s.width}, downsample {s.downsample}, {s.folds}-fold within sites")
    print("| arm | pooled AUC, leave-one-site-out | pooled AUC, within-site K-fold | "
          "final train loss | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, r in (("centralised", central), ("federated (FedAvg)", fed)):
        print(f"| {name} | {r['loso']:.3f} | {r['kfold']:.3f} | {r['final_loss']:.1f} | "
              f"{r['seconds']:.1f} |")
    print(f"\nbytes per training round (3 sites, both ways): "
          f"{fed['bytes_per_training_round'] / 1e6:.2f} MB; per classifier round: "
          f"{fed['bytes_per_classifier_round'] / 1e3:.1f} kB x {fed['classifier_rounds']} "
          f"rounds; whole run {fed['bytes_total'] / 1e6:.2f} MB")
    if args.json:
        args.json.write_text(json.dumps({"centralised": central, "federated": fed,
                                         "sites": counts, "settings": s.to_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
