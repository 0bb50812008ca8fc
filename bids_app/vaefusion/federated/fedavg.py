"""Federated averaging (McMahan et al. 2017) of the sites' weights, weighted by their volumes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vaefusion.federated.messages import LocalUpdate, Weights


def fedavg(updates: Sequence[LocalUpdate]) -> Weights:
    """The volume-weighted mean of the sites' weights, in the sites' order.

    Accumulated in float64 and cast back to each tensor's dtype, so that one site's weights
    come back bit for bit (its weight is exactly 1.0): FedAvg over a single site is the
    identity, which the equivalence test relies on.
    """
    if not updates:
        raise ValueError("FedAvg needs at least one site's update")
    total = sum(u.n_volumes for u in updates)
    if total <= 0:
        raise ValueError("FedAvg needs sites with volumes")
    ref = updates[0].weights
    for u in updates[1:]:
        if u.weights.keys() != ref.keys() or any(u.weights[k].shape != ref[k].shape
                                                 for k in ref):
            raise ValueError(f"site {u.site} sent weights of another architecture")
    out: Weights = {}
    for key, first in ref.items():
        if not np.issubdtype(first.dtype, np.floating):  # counters: not averaged
            out[key] = first.copy()
            continue
        acc = np.zeros(first.shape, dtype=np.float64)
        for u in updates:
            acc += (u.n_volumes / total) * u.weights[key].astype(np.float64)
        out[key] = acc.astype(first.dtype)
    return out
