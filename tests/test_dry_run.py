"""``--dry-run``: validate, discover, describe the selection, memory and units; write nothing."""

from __future__ import annotations

from vaefusion.cli.run import main


def test_participant_dry_run_validates_describes_and_writes_nothing(tiny_bids, tmp_path,
                                                                    capsys, caplog):
    out, work = tmp_path / "out", tmp_path / "work"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(work), "--n-components",
                 "4", "--participant-label", "01", "02", "--dry-run"])  # validation included
    text = capsys.readouterr().out
    assert code == 0
    assert "Subjects: 2 (sub-01 sub-02)" in text
    assert "Modalities: 4 NeuroMark ICN maps + GMV per subject (5 volumes); 2 subject(s)" in text
    assert "Classes (diagnosis): " in text
    assert "Units: 2 preprocessing" in text and "Memory: " in text
    assert "dry run done (exit 0); nothing was written" in caplog.text
    assert not out.exists() and not work.exists()


def test_group_dry_run_plans_the_units_and_estimates_memory(tiny_bids, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "group", "--n-components", "4",
                 "--skip-bids-validation", "--folds", "3", "--latent-dim", "4", "8",
                 "--seed", "0", "1", "--methods", "vae", "pca-late", "--downsample", "2",
                 "--width", "0.125", "--mem", "2", "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0
    assert "Subjects: 8 " in text
    counts = text.split("Classes (diagnosis): ", 1)[1].splitlines()[0]
    assert "HC " in counts and "SZ " in counts
    assert "Units: 12 VAE fold(s) (latent dims 4 8 x seeds 0 1 x 1 repeat(s) x 3 folds" in text
    assert "Units: 4 baseline(s) (pca-late, each over all 3 folds)" in text
    assert "Memory: vae ~" in text and "pca-late ~" in text
    assert "per unit available (--mem 2 GB / --nprocs 1)" in text
    assert not out.exists()


def test_dry_run_ends_with_the_runs_own_errors(tiny_bids, tmp_path, caplog):
    out = tmp_path / "out"
    assert main([str(tiny_bids), str(out), "participant", "--skip-bids-validation",
                 "--participant-label", "99", "--dry-run"]) == 18
    assert "--participant-label 99 matches no subject" in caplog.text
    assert not out.exists()
