"""Fault recovery: kill and resume, Ctrl-C and SIGTERM, the status file, determinism.

The kill and signal tests run the real command line in a subprocess (its own process group)
on the tiny 8-subject dataset with the cost knobs of ``conftest.TINY_GROUP``, a few more
epochs and two methods, and act as soon as the first training checkpoint
(``WORK/training/<unit>/last/checkpoint.pt``) appears.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import TINY_GROUP
from vaefusion.disk.progress import write_unit_progress
from vaefusion.workflows.status import RunStatus

#: The group knobs of these tests: TINY_GROUP with enough epochs to interrupt in the middle
#: (later options win), one PCA baseline, one thread per training.
GROUP = [*TINY_GROUP, "--epochs", "6", "--patience", "10", "--methods", "vae", "pca-early",
         "--omp-nthreads", "1"]
#: Seconds a stopped run may take to exit (generous: CI machines are shared).
STOP_WITHIN_S = 20.0


# --------------------------------------------------------------------------- helpers
def command(ds: Path, root: Path, level: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vaefusion", str(ds), str(root / "out"), level,
            "-w", str(root / "work"), *extra]


def start(ds: Path, root: Path, level: str, *extra: str) -> subprocess.Popen:
    """The CLI in its own session (process group), stderr captured."""
    return subprocess.Popen(command(ds, root, level, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(proc: subprocess.Popen, pattern: str, root: Path, timeout: float = 300) -> Path:
    """The first file matching ``pattern`` under ``root`` (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {pattern} appeared:\n"
                        f"{proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"{pattern} did not appear within {timeout} s")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def run_cli(ds: Path, root: Path, level: str, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command(ds, root, level, *extra), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def status(root: Path) -> dict:
    # each run has its own status file (logs/status-<run id>.json): the newest is the last run's
    files = (root / "out" / "logs").glob("status-*.json")
    return json.loads(max(files, key=lambda p: p.stat().st_mtime).read_text())


#: Group outputs that must be bitwise identical between runs with the same seed and inputs
#: (training_history.tsv is not: it holds timings).
SAME_BYTES = ["group/metrics.tsv", "group/decision_scores.tsv", "group/summary.json",
              "group/latents_vae_L4_seed0_rep0.tsv", "sub-01/sub-01_desc-vae_latents.tsv",
              *[f"group/models/vae_L4_seed0_rep0_fold{k}/model.safetensors" for k in range(3)]]


def no_timings(root: Path) -> list[dict[str, str]]:
    """training_history.tsv without its timing columns."""
    lines = (root / "out/group/training_history.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    for row in rows:
        del row["seconds"], row["volumes_per_s"]
    return rows


@pytest.fixture(scope="module")
def reference(tiny_bids, tmp_path_factory) -> Path:
    """One uninterrupted group run (a subprocess, as the runs it is compared with)."""
    root = tmp_path_factory.mktemp("reference")
    result = run_cli(tiny_bids, root, "group", *GROUP)
    assert "success (exit 0)" in last_line(result.stderr)
    return root


# --------------------------------------------------------------------------- kill and resume
@pytest.mark.slow
def test_kill_during_training_resumes_to_the_same_results(tiny_bids, reference, tmp_path):
    proc = start(tiny_bids, tmp_path, "group", *GROUP)
    ckpt = wait_for(proc, "work/training/*/last/checkpoint.pt", tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)  # the node dies: no handler, no cleanup
    proc.wait()
    assert ckpt.is_file() and not (tmp_path / "out/group/summary.json").exists()
    assert status(tmp_path)["state"] == "running"  # what a killed run leaves: not "succeeded"

    rerun = run_cli(tiny_bids, tmp_path, "group", *GROUP)
    assert f"resuming {ckpt.parent.parent}" in rerun.stderr  # the checkpoint was used
    assert "success (exit 0)" in last_line(rerun.stderr)
    for rel in SAME_BYTES:
        a, b = reference / "out" / rel, tmp_path / "out" / rel
        assert a.read_bytes() == b.read_bytes(), f"{rel} differs after kill and resume"
    assert no_timings(reference) == no_timings(tmp_path)
    assert status(tmp_path)["state"] == "succeeded"


@pytest.mark.slow
def test_kill_during_preprocessing_then_rerun_completes(tiny_bids, tmp_path):
    proc = start(tiny_bids, tmp_path, "participant", "--n-components", "4",
                 "--skip-bids-validation")
    wait_for(proc, "work/cache/sub-*.json", tmp_path)  # one subject done, others under way
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = run_cli(tiny_bids, tmp_path, "participant", "--n-components", "4",
                    "--skip-bids-validation")
    assert "success (exit 0)" in last_line(rerun.stderr)
    fresh = tmp_path / "fresh"
    run_cli(tiny_bids, fresh, "participant", "--n-components", "4", "--skip-bids-validation")
    stacks = sorted((fresh / "out").glob("sub-*/*_stack.nii.gz"))
    assert len(stacks) == 8
    for stack in stacks:
        twin = tmp_path / "out" / stack.relative_to(fresh / "out")
        assert np.array_equal(np.asanyarray(nib.load(twin).dataobj),
                              np.asanyarray(nib.load(stack).dataobj)), twin
        sidecar = stack.with_name(stack.name.replace(".nii.gz", ".json"))
        twin_sidecar = twin.with_name(twin.name.replace(".nii.gz", ".json"))
        assert twin_sidecar.read_text() == sidecar.read_text()
    for cache in sorted((fresh / "work" / "cache").glob("sub-*.npy")):
        twin = tmp_path / "work" / "cache" / cache.name
        assert np.array_equal(np.load(twin), np.load(cache))
    # what a kill can leave is hidden and named *.part: nothing that looks complete
    visible = [p for p in (tmp_path / "out").rglob("*")
               if p.is_file() and not any(part.startswith(".") for part in p.parts)]
    assert not [p for p in visible if ".part" in p.name]


# --------------------------------------------------------------------------- signals
@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT-group-multiproc", "SIGTERM-pid-serial"])
def test_signal_stops_the_whole_run(tiny_bids, tmp_path, how):
    """Ctrl-C reaches the whole process group (MultiProc workers included); SIGTERM from a
    scheduler may reach the main process only. Either way the run stops within seconds,
    leaves its checkpoint, and ends with one line and exit 130 or 143."""
    name, target, mode = how.split("-")
    sig = getattr(signal, name)
    procs = ["--nprocs", "2"] if mode == "multiproc" else ["--nprocs", "1"]
    # patience as long as the training: early stopping must not end (and clear) the unit
    # whose checkpoint this test watches before the signal arrives on a slow machine
    proc = start(tiny_bids, tmp_path, "group", *GROUP, "--epochs", "200", "--patience", "200",
                 *procs)
    ckpt = wait_for(proc, "work/training/*/last/checkpoint.pt", tmp_path)
    # the status file follows the run: phase, units and the training epoch
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = status(tmp_path)
        if any(u.get("epoch") for u in now["running"]):
            break
        time.sleep(0.1)
    assert now["phase"] == "cross-validation" and now["state"] == "running"
    assert now["units_total"] == 3 + 1 and any(u.get("epoch") for u in now["running"]), now
    sent = time.monotonic()
    if target == "group":
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{name} did not stop the run within {STOP_WITHIN_S} s")
    took = time.monotonic() - sent
    code = 128 + sig
    assert proc.returncode == code, stderr[-3000:]
    line = last_line(stderr)
    assert f"interrupted by {name} (exit {code})" in line and "resumes" in line
    assert "Traceback" not in stderr and "Please report" not in stderr
    assert "exception calling callback" not in stderr
    deadline = time.monotonic() + 5
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(proc.pid), "worker processes outlived the run"
    end = status(tmp_path)
    assert end["state"] == "interrupted" and end["exit_code"] == code
    assert ckpt.is_file()
    assert torch.load(ckpt, weights_only=True)["epoch"] >= 0  # resumable
    assert not (tmp_path / "out/group/summary.json").exists()
    assert not list((tmp_path / "out/logs").glob("crash-*")), "an interrupt is not a crash"
    print(f"{how}: stopped {took:.1f} s after the signal")


# --------------------------------------------------------------------------- status file
def test_status_file_reports_phases_units_and_epochs(tmp_path):
    path = tmp_path / "logs" / "status.json"
    st = RunStatus(path, "group", heartbeat_s=3600, refresh_s=0.05).start()
    try:
        st.phase("cross-validation", total=2)
        progress = tmp_path / "progress.json"
        st.unit_started("vae_L4_seed0_rep0_fold0", progress)
        write_unit_progress(progress, 3, 10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            running = json.loads(path.read_text())["running"]
            if running and running[0].get("epoch") == 3:
                break
            time.sleep(0.05)
        assert running[0] == {**running[0], "unit": "vae_L4_seed0_rep0_fold0", "epoch": 3,
                              "epochs": 10}
        st.unit_finished("vae_L4_seed0_rep0_fold0")
        st.unit_finished("pca-early_L4_seed0_rep0", ok=False)
        now = json.loads(path.read_text())
        assert (now["units_done"], now["units_failed"], now["units_total"]) == (1, 1, 2)
        st.finish(65, "failed", "bad data")
    finally:
        st.stop()
    end = json.loads(path.read_text())
    assert (end["state"], end["exit_code"], end["message"]) == ("failed", 65, "bad data")
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]  # no temp file left


def test_heartbeat_names_what_runs_in_a_silent_stretch(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vaefusion")
    st = RunStatus(tmp_path / "status.json", "group", heartbeat_s=0.2, refresh_s=0.05).start()
    try:
        st.phase("cross-validation", total=3)
        st.unit_started("pca-early_L8_seed0_rep0")
        deadline = time.monotonic() + 10
        while "still working" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        st.stop()
    assert "still working: cross-validation; 0/3 done; pca-early_L8_seed0_rep0 running (" \
        in caplog.text


# --------------------------------------------------------------------------- determinism
def test_thread_counts_agree_within_tolerance(tiny_bids, tmp_path):
    """One training with 1 and with 2 threads: float summation order differs, so results
    agree to a tolerance (docs/reliability.md), not bit for bit."""
    from dataclasses import replace

    from vaefusion.config import Config
    from vaefusion.inputs.preprocess import preprocess_subject
    from vaefusion.training.inference import embed
    from vaefusion.training.trainer import train_vae

    paths = []
    for sub in ("01", "02", "03", "04", "05", "06"):
        icn = next(tiny_bids.glob(f"derivatives/*/sub-{sub}/func/*_components.nii.gz"))
        gmv = next(tiny_bids.glob(f"derivatives/*/sub-{sub}/anat/*_probseg.nii.gz"))
        paths.append(preprocess_subject(str(icn), str(gmv), sub, None, None,
                                        tmp_path / "cache")[0])
    cfg = Config(epochs=3, width=0.125, downsample=2, lr=1e-3, device="cpu").resolve()
    before = torch.are_deterministic_algorithms_enabled()
    try:
        mus = {}
        for threads in (1, 2):
            runtime = replace(cfg.runtime(), threads=threads)
            result = train_vae(cfg, runtime, 4, 0, paths[:4], paths[4:],
                               tmp_path / f"t{threads}")
            mus[threads] = embed(result.model, paths, "cpu", cfg.downsample)
    finally:
        torch.use_deterministic_algorithms(before)
    scale = np.abs(mus[1]).max()
    assert scale > 0
    assert np.abs(mus[1] - mus[2]).max() <= 1e-5 * max(1.0, scale)


def test_outputs_record_seeds_versions_backend_and_labels(tiny_bids, reference):
    """What the numbers depend on is in summary.json; decision scores carry the dataset's
    labels (participants.tsv), not the classifier's 1/0."""
    summary = json.loads((reference / "out/group/summary.json").read_text())
    assert (summary["seeds"], summary["cv_seed"], summary["classifier_backend"]) == (
        [0], 0, "sklearn")
    assert torch.__version__ == summary["software"]["torch"]
    assert {"python", "vaefusion", "numpy", "scikit-learn", "nibabel", "nipype",
            "pybids"} <= set(summary["software"])
    truth = dict(line.split("\t")[:2] for line in
                 (tiny_bids / "participants.tsv").read_text().splitlines()[1:])
    lines = (reference / "out/group/decision_scores.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    assert rows and {r["label"] for r in rows} == {"SZ", "HC"}
    assert all(r["label"] == truth[r["participant_id"]] for r in rows)
    end = status(reference)
    assert (end["state"], end["exit_code"], end["crash_file"]) == ("succeeded", 0, None)
