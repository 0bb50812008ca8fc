"""One source for defaults: the platforms' sample configurations (Brainlife's
config.json.sample, NeuroFLAME's parameters.json) run the recipe README describes."""

from __future__ import annotations

import json
import math
from pathlib import Path

from vaefusion.config import Config
from vaefusion.federated.settings import FederatedSettings

ROOT = Path(__file__).resolve().parents[1]
#: Brainlife keys whose Config field has another name or shape (a string of numbers, a list)
BRAINLIFE_FIELDS = {"latent_dim": "latent_dims", "seed": "seeds"}
#: Brainlife keys that are the job's, not a setting with a default (the levels to run)
BRAINLIFE_JOB = {"bids", "analysis_level", "extra_args", "keep_work"}
#: NeuroFLAME's real-data schedule, documented in platforms/neuroflame/README.md (50 x 2
#: local epochs: the paper's 100 epochs), where the defaults are a quick run
NEUROFLAME_SCHEDULE = {"rounds": 50, "local_epochs": 2}


def _as_config_value(value, default):
    if isinstance(default, list) and isinstance(value, str):  # "vae pca-early", "128"
        words = value.split()
        return [type(default[0])(w) for w in words] if default else words
    return value


def test_brainlife_sample_is_the_apps_defaults():
    sample = json.loads((ROOT / "platforms" / "brainlife" / "config.json.sample").read_text())
    defaults = Config()
    checked = []
    for key, value in sample.items():
        field = BRAINLIFE_FIELDS.get(key, key)
        if key in BRAINLIFE_JOB or not hasattr(defaults, field) or value in ("", None):
            continue  # the platform's own keys (bids, extra_args ...) and unset selections
        default = getattr(defaults, field)
        assert _as_config_value(value, default) == default, f"{key}: {value!r} != {default!r}"
        checked.append(key)
    assert {"lr", "beta", "epochs", "patience", "latent_dim", "folds", "methods"} <= set(checked)


def test_neuroflame_parameters_are_the_federated_defaults():
    params = json.loads((ROOT / "platforms" / "neuroflame" / "parameters.json").read_text())
    defaults = FederatedSettings().to_dict()
    assert set(params) == set(defaults)  # every setting, so none drifts unseen
    for key, value in params.items():
        want = NEUROFLAME_SCHEDULE.get(key, defaults[key])
        assert value == want, f"{key}: {value!r} != {want!r}"


def test_federated_method_defaults_are_vaefusions():
    fed, app = FederatedSettings(), Config()
    assert (fed.lr, fed.beta, fed.likelihood) == (app.lr, app.beta, app.likelihood)


def test_round_timeout_is_finite_by_default():
    timeout = FederatedSettings().round_timeout
    assert timeout > 0 and math.isfinite(timeout)
