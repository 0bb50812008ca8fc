"""Discovery with pybids: both naming schemes, filters, labels, missing modalities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vaefusion.config import Config
from vaefusion.errors import EXIT_NO_DATA, EXIT_NO_INPUT, VaefusionError
from vaefusion.inputs.discovery import discover


def _cfg(ds: Path, tmp_path: Path, **kw) -> Config:
    return Config(bids_dir=ds, output_dir=tmp_path / "out", work_dir=tmp_path / "work",
                  n_components=4, **kw)


def test_bids_names(tiny_bids, tmp_path):
    subjects = discover(_cfg(tiny_bids, tmp_path))
    assert len(subjects) == 8
    for s in subjects:
        assert s.complete and s.label in {"SZ", "HC"}
        assert s.icn.endswith("_desc-neuromark_components.nii.gz")
        assert "label-GM" in s.gmv


def test_native_names(tiny_native, tmp_path):
    subjects = discover(_cfg(tiny_native, tmp_path))
    assert len(subjects) == 6
    assert all("_component_ica_s" in s.icn for s in subjects)
    assert all(Path(s.gmv).name.startswith(("smwc1", "mwc1", "smwp1", "mwp1")) for s in subjects)
    # the GIFT index maps to the right participant
    assert [s.subject for s in subjects] == sorted(s.subject for s in subjects)


def test_participant_label_with_or_without_prefix(tiny_bids, tmp_path):
    first, second = (s.subject for s in discover(_cfg(tiny_bids, tmp_path))[:2])
    picked = discover(_cfg(tiny_bids, tmp_path, participant_label=[first, second]))
    assert [s.subject for s in picked] == [first, second]


def test_bids_filter_file_excludes_everything(tiny_bids, tmp_path):
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"icn": {"desc": "nothere"}, "gmv": {"desc": "nothere"}}))
    with pytest.raises(VaefusionError) as err:
        discover(_cfg(tiny_bids, tmp_path, bids_filter_file=filt))
    assert err.value.code == EXIT_NO_DATA


def test_bids_filter_file_selects(tiny_bids, tmp_path):
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"icn": {"task": "rest"}}))
    assert len(discover(_cfg(tiny_bids, tmp_path, bids_filter_file=filt))) == 8


def _drop_gmv(ds: Path, subject: str) -> None:
    for path in ds.glob(f"derivatives/**/sub-{subject}*probseg.nii*"):
        path.unlink()


@pytest.mark.parametrize("policy,expected", [("skip", 7), ("keep", 8)])
def test_missing_modality_is_reported_then_skipped_or_kept(writable_copy, tmp_path, caplog,
                                                          policy, expected):
    first = discover(_cfg(writable_copy, tmp_path))[0].subject
    _drop_gmv(writable_copy, first)
    subjects = discover(_cfg(writable_copy, tmp_path, missing_modality=policy))
    assert len(subjects) == expected
    assert f"sub-{first} lacks a modality (no gray-matter (GMV) file found)" in caplog.text


def test_missing_modality_error(writable_copy, tmp_path):
    first = discover(_cfg(writable_copy, tmp_path))[0].subject
    _drop_gmv(writable_copy, first)
    with pytest.raises(VaefusionError) as err:
        discover(_cfg(writable_copy, tmp_path, missing_modality="error"))
    assert err.value.code == EXIT_NO_INPUT and f"sub-{first}" in err.value.message


def test_sessions(tmp_path):
    from conftest import simulate

    ds = simulate(tmp_path / "ses", "--n-subjects", "4", "--sessions", "2")
    subjects = discover(_cfg(ds, tmp_path))
    assert len(subjects) == 8 and {s.session for s in subjects} == {"1", "2"}
    only = discover(_cfg(ds, tmp_path, session_label=["2"]))
    assert len(only) == 4 and all(s.session == "2" for s in only)


def test_gift_sessions_map_through_gift_session(tmp_path):
    """GIFT numbers a subject's sessions in the file name (``_s1_``, ``_s2_``); the mapping
    TSV's ``gift_session`` column sends each file to its own BIDS session."""
    from conftest import simulate

    ds = simulate(tmp_path / "gs", "--n-subjects", "3", "--sessions", "2", "--naming", "native")
    subjects = discover(_cfg(ds, tmp_path))
    assert len(subjects) == 6 and {s.session for s in subjects} == {"1", "2"}
    for s in subjects:
        index = int(s.subject)  # the simulator gives subject k the GIFT index k
        assert Path(s.icn).name.endswith(f"_sub{index:03d}_component_ica_s{s.session}_.nii")
        assert f"ses-{s.session}" in s.gmv
