"""Demographics, diagnosis and site effects of the simulated sample."""

from __future__ import annotations

from typing import Any

import numpy as np


def draw_participants(rng: np.random.Generator, n_subjects: int, patient_fraction: float,
                      n_sites: int) -> list[dict[str, Any]]:
    """Participants with diagnosis (exactly round(n * fraction) SZ), age, sex and site."""
    width = max(2, len(str(n_subjects)))
    n_sz = int(round(n_subjects * patient_fraction))
    patient = np.zeros(n_subjects, bool)
    patient[rng.permutation(n_subjects)[:n_sz]] = True
    age = np.clip(rng.normal(38.0, 11.0, n_subjects), 18, 65).round().astype(int)
    # Schizophrenia samples are usually male-skewed.
    male = rng.random(n_subjects) < np.where(patient, 0.65, 0.5)
    site = rng.integers(1, n_sites + 1, n_subjects)
    return [
        {"participant_id": f"sub-{i + 1:0{width}d}", "diagnosis": "SZ" if patient[i] else "HC",
         "age": int(age[i]), "sex": "M" if male[i] else "F", "site": f"site{site[i]}"}
        for i in range(n_subjects)
    ]


def draw_sites(rng: np.random.Generator, n_sites: int) -> dict[str, dict[str, float]]:
    """Site effects: ICN amplitude and noise factors, GM intensity factor."""
    return {
        f"site{s + 1}": {
            "icn_amplitude": float(np.exp(rng.normal(0.0, 0.1))),
            "icn_noise": float(rng.uniform(0.8, 1.25)),
            "gm_scale": float(np.exp(rng.normal(0.0, 0.03))),
        }
        for s in range(n_sites)
    }
