"""Provenance in the output's dataset_description.json and the Boutiques descriptor: a
container claimed only inside one, every input dataset a source."""

from __future__ import annotations

import pytest

import vaefusion.derivatives.provenance as provenance
from vaefusion.config import Config


def test_no_container_outside_one(tmp_path):
    assert provenance.container({}, root=tmp_path) is None


def test_docker_is_claimed_without_an_image_it_cannot_know(tmp_path):
    (tmp_path / ".dockerenv").write_text("")
    assert provenance.container({}, root=tmp_path) == {"Type": "docker"}


def test_podman_names_its_image(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".containerenv").write_text(
        'engine="podman-4.9"\nname="job"\nimage="docker.io/vaefusion/vaefusion:0.1.0"\n')
    assert provenance.container({}, root=tmp_path) == {
        "Type": "docker", "Tag": "docker.io/vaefusion/vaefusion:0.1.0"}


@pytest.mark.parametrize("runtime", ["APPTAINER", "SINGULARITY"])
def test_apptainer_names_its_image_file(tmp_path, runtime):
    env = {f"{runtime}_CONTAINER": "/images/vaefusion_0.1.0.sif",
           f"{runtime}_NAME": "vaefusion_0.1.0.sif"}
    assert provenance.container(env, root=tmp_path) == {
        "Type": "singularity", "Tag": "vaefusion_0.1.0.sif",
        "URI": "file:///images/vaefusion_0.1.0.sif"}


def test_description_claims_a_container_only_inside_one(tiny_bids, monkeypatch):
    from vaefusion.derivatives.dataset import dataset_description

    cfg = Config(bids_dir=tiny_bids)
    monkeypatch.setattr(provenance, "container", lambda: None)
    assert "Container" not in dataset_description(cfg)["GeneratedBy"][0]
    monkeypatch.setattr(provenance, "container", lambda: {"Type": "docker"})
    assert dataset_description(cfg)["GeneratedBy"][0]["Container"] == {"Type": "docker"}


def test_source_datasets_list_the_derivative_inputs(tiny_bids):
    from vaefusion.derivatives.dataset import dataset_description
    from vaefusion.inputs.discovery import derivative_dirs

    cfg = Config(bids_dir=tiny_bids)
    urls = [s["URL"] for s in dataset_description(cfg)["SourceDatasets"]]
    inputs = derivative_dirs(cfg)
    assert len(inputs) >= 2  # NeuroMark ICN maps and SPM GMV
    assert urls == [tiny_bids.resolve().as_uri()] + [p.resolve().as_uri() for p in inputs]


def test_boutiques_names_the_bids_app_spec_version():
    from vaefusion.cli.boutiques import descriptor

    assert descriptor()["custom"]["BIDSAppSpecVersion"] == "0.1.0.dev"
