"""Participant jobs of a cluster array on one OUTPUT_DIR (the BIDS-Apps contract): each run
keeps to its own status, configuration and crash files, ends by its own units only, and the
files they share stay whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vaefusion.disk import naming

#: A job of the array: the real ``vaefusion`` entry point in its own process, with a bug
#: planted in one subject's preprocessing (the crash of one job of the array).
LAUNCHER = """\
import sys

import vaefusion.inputs.preprocess as pre
from vaefusion.cli.run import main

real = pre.preprocess_subject


def crashing(icn, gmv, subject, *args, **kwargs):
    if subject == {crash!r}:
        raise RuntimeError("simulated bug in the preprocessing")
    return real(icn, gmv, subject, *args, **kwargs)


pre.preprocess_subject = crashing
sys.exit(main(sys.argv[1:]))
"""


def start_job(launcher: Path, ds: Path, out: Path, work: Path, label: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(launcher), str(ds), str(out), "participant",
         "--participant-label", label, "-w", str(work), "--n-components", "4",
         "--skip-bids-validation", "--omp-nthreads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_array_of_participant_jobs_with_one_crash(tiny_bids, tmp_path, caplog):
    """4 jobs started at once on one OUTPUT_DIR and one work dir, as a SLURM array runs them;
    sub-03's crashes. The other three exit 0 and their outputs validate; the crashed one
    exits 1 and names its subject; a group run lists every run."""
    from test_cli import validator_errors

    launcher = tmp_path / "job.py"
    launcher.write_text(LAUNCHER.format(crash="03"))
    out, work = tmp_path / "out", tmp_path / "work"
    labels = ["01", "02", "03", "04"]
    jobs = {label: start_job(launcher, tiny_bids, out, work, label) for label in labels}
    outputs = {label: job.communicate(timeout=600)[0] for label, job in jobs.items()}
    codes = {label: job.returncode for label, job in jobs.items()}

    assert codes == {"01": 0, "02": 0, "03": 1, "04": 0}, outputs
    last = outputs["03"].strip().splitlines()[-1]
    assert "failed (exit 1, a crash)" in last and "crash file:" in last
    assert "sub-03" in outputs["03"] and "simulated bug" in outputs["03"]
    for label in ("01", "02", "04"):
        assert "success (exit 0)" in outputs[label].strip().splitlines()[-1]
        assert naming.preproc_stack(out, label, None).is_file()
    assert not naming.subject_dir(out, "03").exists()

    # every run has its own status, configuration and log; the crash is in sub-03's folder
    logs = naming.logs_dir(out)
    statuses = [json.loads(p.read_text()) for p in logs.glob(naming.STATUS_PATTERN)]
    assert sorted(s["participant_label"][0] for s in statuses) == labels
    ended = {s["participant_label"][0]: (s["state"], s["exit_code"]) for s in statuses}
    assert ended == {"01": ("succeeded", 0), "02": ("succeeded", 0), "03": ("failed", 1),
                     "04": ("succeeded", 0)}
    ids = {s["run_id"] for s in statuses}
    assert len(ids) == 4
    assert {naming.run_id_of(p) for p in logs.glob(naming.CONFIG_PATTERN)} == ids
    crashes = list(logs.glob(f"crash-*/{naming.CRASH_PATTERN}"))
    crashed = next(s for s in statuses if s["participant_label"] == ["03"])
    assert [c.parent for c in crashes] == [naming.crash_dir(out, crashed["run_id"])]
    assert str(crashes[0]) == crashed["crash_file"]

    # the shared files are whole and the dataset validates (sub-03 simply absent)
    desc = json.loads((out / naming.DATASET_DESCRIPTION).read_text())
    assert desc["DatasetType"] == "derivative"
    assert "desc-preproc" in naming.descriptions_file(out).read_text()
    assert not list(out.rglob("*.part*"))
    assert validator_errors(out) == []

    from vaefusion.cli.runs import log_runs, recorded_runs

    runs = recorded_runs(out)
    assert sorted(r.subjects for r in runs) == [(label,) for label in labels]
    failed = [r.line() for r in runs if r.state != "succeeded"]
    assert len(failed) == 1 and "[sub-03] failed (exit 1)" in failed[0]
    assert log_runs(out, own=crashed["run_id"]) == [r for r in runs
                                                    if r.run_id != crashed["run_id"]]

    # a group run lists them first (here one that then stops at its own selection, exit 18)
    from vaefusion.cli.run import main

    caplog.clear()
    assert main([str(tiny_bids), str(out), "group", "-w", str(work), "--n-components", "4",
                 "--skip-bids-validation", "--participant-label", "99"]) == 18
    assert "4 earlier run(s) on" in caplog.text
    listed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("  ")]
    assert len(listed) == 4 and sum("[sub-03] failed (exit 1)" in m for m in listed) == 1
    assert all(naming.preproc_stack(out, label, None).is_file() for label in ("01", "02", "04"))


def test_a_crash_of_another_run_is_not_this_runs(tmp_path):
    """A crash file of a concurrent run, newer than this run's start, does not fail it."""
    from vaefusion.config import Config
    from vaefusion.workflows.base import crash_files

    mine = Config(output_dir=tmp_path, run_id=naming.new_run_id())
    other = naming.crash_dir(tmp_path, naming.new_run_id())
    other.mkdir(parents=True)
    (other / "crash-20261206-201209-user-preprocess.a2-x.txt").write_text("boom")
    assert crash_files(mine, since=0.0) == []
    own = naming.crash_dir(tmp_path, mine.run_id)
    own.mkdir()
    (own / "crash-20261206-201210-user-preprocess.a0-y.txt").write_text("boom")
    assert [p.parent for p in crash_files(mine, since=0.0)] == [own]


def test_a_failed_run_keeps_the_skeleton_while_another_runs(tmp_path):
    """A job that fails before any subject is written removes the bare dataset only when no
    other job of the array is still going to write into it."""
    from vaefusion.config import Config
    from vaefusion.derivatives.dataset import drop_bare_dataset, init_output_dir

    out = tmp_path / "out"
    first = Config(bids_dir=None, output_dir=out, run_id=naming.new_run_id())
    second = Config(bids_dir=None, output_dir=out, run_id=naming.new_run_id())
    init_output_dir(first)
    init_output_dir(second)  # started, no status file yet: running
    assert not drop_bare_dataset(out, first.run_id)
    assert (out / naming.DATASET_DESCRIPTION).is_file()
    naming.status_file(out, second.run_id).write_text(json.dumps(
        {"state": "failed", "exit_code": 65, "pid": os.getpid()}))
    assert drop_bare_dataset(out, first.run_id)
    assert not (out / naming.DATASET_DESCRIPTION).exists()


def test_concurrent_description_merges_keep_every_label(tmp_path):
    """descriptions.tsv is read, merged and rewritten under a lock: labels added by threads
    at once all survive."""
    from vaefusion.derivatives.dataset import write_descriptions

    labels = [f"lab{i}" for i in range(8)]
    threads = [threading.Thread(target=write_descriptions, args=(tmp_path, {label: label}))
               for label in labels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = naming.descriptions_file(tmp_path).read_text()
    assert all(f"desc-{label}\t" in text for label in labels)
