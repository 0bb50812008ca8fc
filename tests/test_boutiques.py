"""The Boutiques descriptor and the argparse parser never drift apart.

Every option of :func:`vaefusion.cli.parser.build_parser` has exactly one input in
``boutiques.json`` (by its canonical long flag) and every flagged input is a parser option;
types, lists and choices agree; the packaged and top-level copies are identical; and
``bosh validate --bids`` accepts the file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vaefusion import __version__
from vaefusion.cli.boutiques import descriptor, descriptor_text
from vaefusion.cli.parser import ANALYSIS_LEVELS, build_parser
from vaefusion.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ROOT / "boutiques.json"
PACKAGED = ROOT / "bids_app" / "vaefusion" / "data" / "boutiques.json"

#: Parser options that deliberately have no descriptor input, and why.
EXCLUDED = {
    "-h": "argparse help: prints usage, runs nothing",
    "--help": "argparse help: prints usage, runs nothing",
    "--version": "prints the version and exits; platforms read tool-version instead",
    "--boutiques": "prints this descriptor and exits",
}

#: Alternative spellings of an option; the descriptor uses the canonical (first long) flag.
ALIASES = {
    "--participant_label": "--participant-label",  # BIDS-Apps spelling
    "--skip_bids_validation": "--skip-bids-validation",  # fMRIPrep's old spelling
    "--skip_bids_validator": "--skip-bids-validation",  # fMRIPrep's older spelling
    "--session_label": "--session-label",  # BIDS-Apps spelling
    "-w": "--work-dir",
    "--nthreads": "--nprocs",
    "--n-cpus": "--nprocs",
    "--mem-gb": "--mem",
    "--random-seed": "--seed",
    "-v": "--verbose",  # countable on the CLI; the descriptor offers one level as a Flag
}

#: The BIDS-Apps positional arguments, in order, and their value-keys.
POSITIONALS = {"bids_dir": "[BIDS_DIR]", "output_dir": "[OUTPUT_DIR]",
               "analysis_level": "[ANALYSIS_LEVEL]"}


def _options() -> dict[str, argparse.Action]:
    """Canonical long flag -> action, for every optional argument of the parser."""
    out = {}
    for action in build_parser()._actions:
        if not action.option_strings:
            continue
        longs = [s for s in action.option_strings if s.startswith("--")]
        out[longs[0]] = action
    return out


def _flagged_inputs() -> dict[str, dict]:
    return {i["command-line-flag"]: i for i in descriptor()["inputs"] if "command-line-flag" in i}


def test_copies_identical():
    assert TOP_LEVEL.read_bytes() == PACKAGED.read_bytes(), (
        "boutiques.json and bids_app/vaefusion/data/boutiques.json differ; edit the packaged "
        "one and copy it: cp bids_app/vaefusion/data/boutiques.json boutiques.json")
    assert descriptor_text() + "\n" == PACKAGED.read_text(encoding="utf-8")


def test_descriptor_is_package_data():
    """The installed package (not only the repo) carries the descriptor."""
    from importlib import resources

    assert resources.files("vaefusion").joinpath("data", "boutiques.json").is_file()


def test_cli_prints_descriptor(capsys):
    from vaefusion.cli.run import main

    assert main(["--boutiques"]) == 0
    assert json.loads(capsys.readouterr().out) == descriptor()


def test_every_parser_option_is_an_input_and_back():
    options = _options()
    flagged = _flagged_inputs()
    every_string = {s for a in build_parser()._actions for s in a.option_strings}
    # the exclusion and alias lists name real options only (no stale entries)
    assert set(EXCLUDED) | set(ALIASES) <= every_string
    for alias, canonical in ALIASES.items():
        assert alias in options[canonical].option_strings, f"{alias} is not {canonical}"
    missing = sorted(set(options) - set(flagged) - set(EXCLUDED))
    assert not missing, f"parser options without a descriptor input: {missing}"
    unknown = sorted(set(flagged) - set(options))
    assert not unknown, f"descriptor flags the parser does not know: {unknown}"
    assert not set(flagged) & set(ALIASES), "the descriptor must use the canonical flags"
    strays = sorted(every_string - set(options) - set(ALIASES) - set(EXCLUDED))
    assert not strays, f"undocumented aliases (add them to ALIASES): {strays}"


def test_inputs_match_parser_semantics():
    options = _options()
    for flag, inp in _flagged_inputs().items():
        action = options[flag]
        where = f"{flag} (input {inp['id']})"
        assert inp["id"] == action.dest, f"{where}: input id must be the argparse dest"
        assert inp["value-key"] == f"[{action.dest.upper()}]", where
        assert inp.get("optional") is True, f"{where}: options are optional"
        if isinstance(action, argparse._StoreTrueAction | argparse._CountAction):
            assert inp["type"] == "Flag", where
            continue
        assert inp["type"] != "Flag", where
        assert bool(inp.get("list")) == (action.nargs == "+"), f"{where}: list vs nargs"
        if action.choices is not None:
            assert inp.get("value-choices") == list(action.choices), f"{where}: choices"
        else:
            assert "value-choices" not in inp, where
        if action.type is int or getattr(action.type, "__name__", "") in {"_positive_int",
                                                                          "_non_negative_int"}:
            assert inp["type"] == "Number" and inp.get("integer") is True, where
        elif action.type is float or getattr(action.type, "__name__", "") in {"_finite",
                                                                             "_positive"}:
            assert inp["type"] == "Number" and not inp.get("integer"), where
        elif action.type is Path:
            assert inp["type"] in {"File", "String"}, where
        else:
            assert inp["type"] == "String", where


def test_positionals_and_analysis_levels():
    desc = descriptor()
    positionals = [a.dest for a in build_parser()._actions if not a.option_strings]
    assert positionals == list(POSITIONALS)
    cmd = desc["command-line"]
    after = cmd.split("vaefusion ", 1)[1].split()
    assert after[:3] == list(POSITIONALS.values()), "positionals in BIDS-Apps order"
    levels = [i for i in desc["inputs"] if i["value-key"] == "[ANALYSIS_LEVEL]"]
    assert len(levels) == 1 and levels[0]["value-choices"] == list(ANALYSIS_LEVELS)


def test_every_value_key_is_on_the_command_line_once():
    desc = descriptor()
    cmd = desc["command-line"]
    for key in {i["value-key"] for i in desc["inputs"]}:
        expected = 2 if key == "[OUTPUT_DIR]" else 1  # also in 'mkdir -p [OUTPUT_DIR];'
        assert cmd.count(key) == expected, key


def test_no_default_values():
    """bosh passes a default-value on every launch, which would override --config-file values.

    The defaults live in Config (and are named in each input's description) instead.
    """
    assert [i["id"] for i in descriptor()["inputs"] if "default-value" in i] == []


def test_error_codes_are_the_exit_codes():
    codes = {e["code"]: e["description"] for e in descriptor()["error-codes"]}
    assert codes == EXIT_CODES


def test_metadata():
    desc = descriptor()
    assert desc["schema-version"] == "0.5"
    assert desc["tool-version"] == __version__
    assert "neuroinformatics" in desc["tags"]["domain"]
    assert desc["container-image"]["type"] == "docker"
    name, tag = desc["container-image"]["image"].rsplit(":", 1)
    assert tag == __version__, "the image tag follows the package version"
    assert desc["suggested-resources"]["cpu-cores"] >= 1
    assert desc["tests"], "at least one boutiques test case"


def test_image_name_is_the_same_everywhere():
    image = descriptor()["container-image"]["image"]
    name = image.rsplit(":", 1)[0]
    places = {
        "Singularity.def": rf"^From:\s*{re.escape(image)}\s*$",
        "platforms/brainlife/main": re.escape(f"docker://{name}:"),
        "docs/hpc/slurm_singularity.sbatch": re.escape(name),
        "Dockerfile": re.escape(f'org.opencontainers.image.ref.name="{name}:${{VERSION}}"'),
    }
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", (ROOT / "Dockerfile").read_text(),
                     re.MULTILINE), "Dockerfile: ARG VERSION must be the package version"
    for rel, pattern in places.items():
        path = ROOT / rel
        assert re.search(pattern, path.read_text(), re.MULTILINE), f"{rel} does not use {image}"


def _bosh() -> str | None:
    local = Path(sys.executable).with_name("bosh")
    return str(local) if local.exists() else shutil.which("bosh")


def test_bosh_validate_bids():
    bosh = _bosh()
    if bosh is None:
        pytest.skip("bosh (boutiques) is not installed")
    proc = subprocess.run([bosh, "validate", "--bids", str(TOP_LEVEL)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BIDS validation OK" in proc.stdout + proc.stderr


def _sample_value(inp: dict):
    if inp["type"] == "Flag":
        return True
    if "value-choices" in inp:
        choices = inp["value-choices"]
        return list(choices) if inp.get("list") else choices[0]
    if inp["type"] == "Number":
        value = inp.get("minimum", 1) + 2 if inp.get("integer") else 0.5
        return [value, value + 1] if inp.get("list") else value
    if inp["id"] == "derivatives":
        return ["nm=/tmp/nm", "gmv=/tmp/gmv"]
    if inp["id"] == "mem_gb":
        return "16G"
    value = f"/tmp/{inp['id']}"
    return [f"{value}1", f"{value}2"] if inp.get("list") else value


def test_bosh_command_line_parses(tmp_path):
    """The command bosh builds from an invocation of every input parses to those values."""
    bosh = _bosh()
    if bosh is None:
        pytest.skip("bosh (boutiques) is not installed")
    desc = descriptor()
    invocation = {"bids_dir": "/data", "output_dir_name": "/out", "analysis_level": "group"}
    for inp in desc["inputs"]:
        if "command-line-flag" in inp:
            invocation[inp["id"]] = _sample_value(inp)
    inv = tmp_path / "invocation.json"
    inv.write_text(json.dumps(invocation))
    proc = subprocess.run([bosh, "exec", "simulate", "-i", str(inv), str(TOP_LEVEL)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "vaefusion " in ln)
    mkdir, command = line.split(";", 1)
    assert mkdir.strip() == "mkdir -p /out"
    argv = shlex.split(command)
    assert argv[0] == "vaefusion"
    args = build_parser().parse_args(argv[1:])
    assert (str(args.bids_dir), str(args.output_dir), args.analysis_level) == (
        "/data", "/out", "group")
    for inp in desc["inputs"]:
        if "command-line-flag" not in inp:
            continue
        got = getattr(args, inp["id"])
        want = invocation[inp["id"]]
        if inp["type"] == "Flag":
            assert got in (True, 1), inp["id"]
        elif inp["id"] == "derivatives":
            assert [f"{n}={p}" for n, p in got] == want
        elif inp["id"] == "mem_gb":  # a memory amount with its unit, parsed to GB
            assert (want, got) == ("16G", 16.0)
        elif inp.get("list"):
            assert [str(g) if isinstance(g, Path) else g for g in got] == want, inp["id"]
        else:
            assert (str(got) if isinstance(got, Path) else got) == want, inp["id"]


def test_descriptor_test_cases_pass_without_container(tmp_path):
    """`bosh test` needs Docker; the same test cases run here with --no-container."""
    bosh = _bosh()
    if bosh is None:
        pytest.skip("bosh (boutiques) is not installed")
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for case in descriptor()["tests"]:
        inv = tmp_path / f"{case['name']}.json"
        inv.write_text(json.dumps(case["invocation"]))
        proc = subprocess.run([bosh, "exec", "launch", "--no-container", str(TOP_LEVEL),
                               str(inv)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        out = proc.stdout + proc.stderr
        match = re.search(r"Exit code\s+(\d+)", out)
        assert match, out
        assert int(match.group(1)) == case["assertions"]["exit-code"], out
