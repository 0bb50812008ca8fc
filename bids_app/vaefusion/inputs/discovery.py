"""Find each subject's NeuroMark ICN maps and gray-matter volume with pybids.

Two naming schemes are accepted for each input:

* BIDS-Derivatives names (SPEC section 2), indexed with pybids::

    sub-01[/ses-1]/func/sub-01[_ses-1]_task-rest_space-..._desc-neuromark_components.nii.gz
    sub-01[/ses-1]/anat/sub-01[_ses-1]_space-..._label-GM_desc-smwc1_probseg.nii.gz

* native names: GIFT's ``<prefix>_sub001_component_ica_s1_.nii`` with a subject mapping TSV
  (``gift_index``, ``participant_id`` and optionally ``session_id``) in the same folder, and
  SPM/CAT12's ``smwc1*``, ``mwc1*``, ``smwp1*``, ``mwp1*`` volumes inside ``sub-<label>`` folders.

Only headers are read here (cheap); voxel checks happen in preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import nibabel as nib

from vaefusion.config import Config
from vaefusion.errors import DataError, MissingInputError, NoDataError, unreadable_input
from vaefusion.inputs.filters import DEFAULT_QUERIES, check_bids_filters, load_bids_filters
from vaefusion.inputs.headers import check_headers
from vaefusion.inputs.identifiers import is_label, read_tsv
from vaefusion.inputs.participants import labels_needed, read_participants
from vaefusion.inputs.types import SubjectInputs

LOG = logging.getLogger("vaefusion.discovery")


GIFT_RE = re.compile(r"_sub(?P<index>\d+)_component_ica_s(?P<session>\d+)_?\.nii(\.gz)?$")


SPM_GM_RE = re.compile(r"^(smwc1|mwc1|smwp1|mwp1)[^/]*\.nii(\.gz)?$")


SUB_RE = re.compile(r"sub-(?P<subject>[A-Za-z0-9]+)")


SES_RE = re.compile(r"ses-(?P<session>[A-Za-z0-9]+)")


# --------------------------------------------------------------------------- helpers
def derivative_dirs(cfg: Config) -> list[Path]:
    """The derivative datasets to search: ``--derivatives`` or BIDS_DIR/derivatives/*."""
    assert cfg.bids_dir is not None
    if cfg.derivatives:
        dirs = []
        for name, raw in cfg.derivatives.items():
            path = Path(raw)
            if not path.is_absolute():
                path = (Path.cwd() / path).resolve()
            if not path.is_dir():
                raise MissingInputError(
                    f"--derivatives {name}={raw}: {path} is not a folder; give an existing path."
                )
            dirs.append(path)
        return dirs
    root = cfg.bids_dir / "derivatives"
    if not root.is_dir():
        raise MissingInputError(
            f"{root} does not exist; put the NeuroMark and GMV derivatives there or name them "
            f"with --derivatives NAME=PATH."
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and not _own_output(p, cfg))
    datasets = [p for p in folders if not SUB_RE.fullmatch(p.name)]
    if len(datasets) < len(folders):
        # subject folders right under derivatives/ (bids-examples eeg_rest_fmri): derivatives/
        # itself is the dataset that holds them, searched once (with its own description)
        LOG.debug("%s holds subject folders: searched as one derivative dataset", root)
        datasets.insert(0, root)
    return datasets


def _own_output(folder: Path, cfg: Config) -> bool:
    """``BIDS_DIR/derivatives/vaefusion`` and the like (BIDS puts derivatives there): a
    vaefusion output, or this run's OUTPUT_DIR while it holds nothing yet (a job of the same
    array may have just created it), is never an input."""
    import json

    if cfg.output_dir is not None and folder.resolve() == Path(cfg.output_dir).resolve():
        try:
            if all(p.name in {"logs"} or p.name.startswith(".") for p in folder.iterdir()):
                return True
        except OSError:
            return False
    try:
        data = json.loads((folder / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    makers = data.get("GeneratedBy") if isinstance(data, dict) else None
    return any(isinstance(g, dict) and g.get("Name") == "vaefusion" for g in makers or [])


def selection_given(cfg: Config) -> bool:
    """Whether the run narrows its inputs (labels or BIDS filters): only then can an empty
    result be the selection's fault (exit 18) rather than missing input (exit 66)."""
    return bool(cfg.participant_label or cfg.session_label or cfg.bids_filter_file
                or cfg.bids_filters)


def no_inputs_error(cfg: Config, deriv: list[Path], what: str) -> MissingInputError | NoDataError:
    """Nothing usable found: the selection's fault (exit 18) when one was given, naming the
    options given, else missing input (exit 66) naming where vaefusion looked."""
    where = ", ".join(map(str, deriv)) or str(cfg.bids_dir)
    if selection_given(cfg):
        given = [option for option, value in (
            ("--participant-label", cfg.participant_label),
            ("--session-label", cfg.session_label),
            ("--bids-filter-file", cfg.bids_filter_file or cfg.bids_filters)) if value]
        return NoDataError(f"{what} in {where} match the selection; check "
                           f"{', '.join(given)}.")
    return MissingInputError(
        f"{what} in {where}; put the NeuroMark ICN maps and GMV volumes in a derivative "
        f"dataset under {cfg.bids_dir / 'derivatives'} (README: Inputs) or name them with "
        f"--derivatives NAME=PATH."
    )


def unknown_labels_error(unknown: list[str], known: set[str], where: Path) -> NoDataError:
    """Exit 18 for ``--participant-label`` values that name no subject, with the closest
    existing labels (a typo: ``O1`` for ``01``, ``sub-1`` for ``01``)."""
    import difflib

    close = sorted({m for label in unknown
                    for m in difflib.get_close_matches(label, sorted(known), n=3, cutoff=0.3)})
    hint = (f"the closest existing label(s): {' '.join(close)}" if close
            else f"the existing labels include {' '.join(sorted(known)[:5]) or 'none'}")
    return NoDataError(f"--participant-label {' '.join(unknown)} matches no subject in {where} "
                       f"(participants.tsv or the input files); {hint}.")


def _fingerprint(paths: list[Path]) -> str:
    """Cheap hash of file names, sizes and mtimes: a new or changed file invalidates the DB."""
    digest = hashlib.sha1()
    for root in paths:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:  # a dangling link: refused at discovery if it is selected
                    st = os.lstat(os.path.join(dirpath, name))
                digest.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def bids_layout(cfg: Config, deriv: list[Path]):  # -> bids.BIDSLayout | None
    """A pybids layout of the raw dataset plus the derivative datasets that pybids can index
    (None when there is none).

    The database lives in the work dir (never in BIDS_DIR, which may be read-only) and is
    reused until a file is added or changed.
    """
    from bids import BIDSLayout

    assert cfg.bids_dir is not None and cfg.work_dir is not None
    indexable = []
    for d in deriv:
        description = d / "dataset_description.json"
        if os.path.lexists(description) and (bad := unreadable_input(description)) is not None:
            raise bad
        if description.is_file():
            indexable.append(d)
        else:  # e.g. FreeSurfer output: pybids refuses it, so only native names count there
            LOG.warning("%s has no dataset_description.json: it is not indexed with pybids, "
                        "so only GIFT/SPM native file names are looked for there (add a "
                        "dataset_description.json to use BIDS names).", d)
    if not indexable:
        return None
    key = _fingerprint([cfg.bids_dir, *indexable])
    db = cfg.work_dir / "bids_db" / key
    args = {"derivatives": [str(d) for d in indexable],
            "validate": False}  # the bids-validator ran before (unless skipped)
    if (db / "layout_index.sqlite").exists():
        return BIDSLayout(str(cfg.bids_dir), database_path=str(db), **args)
    # index in memory (an on-disk index pays an fsync per commit: 8x slower), then save it
    # under a temporary name and rename, so a killed run never leaves a half-written index
    layout = BIDSLayout(str(cfg.bids_dir), **args)
    part = db.with_name(f"{db.name}.{os.getpid()}.part")
    shutil.rmtree(part, ignore_errors=True)
    part.parent.mkdir(parents=True, exist_ok=True)
    layout.save(str(part))
    try:
        part.rename(db)
    except OSError:  # another run saved the same index first
        shutil.rmtree(part, ignore_errors=True)
    # reopen from the final place: the saved layout's connections point at the temporary name
    return BIDSLayout(str(cfg.bids_dir), database_path=str(db), **args)


def _gift_mapping(folder: Path) -> dict[tuple[int, int | None], tuple[str, str | None]]:
    """(GIFT subject index, GIFT session or None) -> (participant label, session label) from
    the mapping TSV. GIFT numbers the sessions of one subject index (``_s1_``, ``_s2_``): a
    ``gift_session`` column maps each to its own BIDS session; without it one row covers every
    GIFT session of that index."""
    tsvs = sorted(folder.glob("*subjects*.tsv"))
    if not tsvs:
        raise MissingInputError(
            f"GIFT component files in {folder} have no subject mapping; add {folder}/"
            f"gift_subjects.tsv with columns gift_index and participant_id (and session_id)."
        )
    if len(tsvs) > 1:
        raise DataError(f"{folder} holds {len(tsvs)} GIFT subject mappings ({tsvs[0].name} and "
                        f"{tsvs[1].name}); keep the one that matches its component files.")
    if (bad := unreadable_input(tsvs[0])) is not None:
        raise bad
    mapping: dict[tuple[int, int | None], tuple[str, str | None]] = {}
    for line, row in read_tsv(tsvs[0])[1]:
        try:
            index = int(row["gift_index"])
            pid = row["participant_id"].strip()
            gift_ses = (row.get("gift_session") or "").strip()
            key = (index, int(gift_ses) if gift_ses not in ("", "n/a") else None)
        except (KeyError, ValueError, AttributeError):
            raise DataError(
                f"{tsvs[0]} needs integer gift_index (and gift_session, if given) and "
                f"participant_id columns; fix it."
            ) from None
        ses = (row.get("session_id") or "").strip()
        ses = None if ses in ("", "n/a") else ses.removeprefix("ses-")
        if key in mapping:
            raise DataError(f"{tsvs[0]} lists gift_index {index}"
                            f"{f' gift_session {key[1]}' if key[1] else ''} twice; add a "
                            f"gift_session column to tell a subject's GIFT sessions apart.")
        for what, value in (("participant_id", pid.removeprefix("sub-")), ("session_id", ses)):
            if value is not None and not is_label(value):
                raise DataError(f"{tsvs[0]} line {line}: {what} '{value}' is not a BIDS label "
                                f"(letters and digits, with or without the sub-/ses- prefix); "
                                f"fix the row.")
        mapping[key] = (pid.removeprefix("sub-"), ses)
    return mapping


def _has_sessions(mapping: dict[tuple[int, int | None], Any]) -> bool:
    return any(ses is not None for _, ses in mapping)


#: the names of input files (BIDS or native), to find folders that stand where one should be
INPUT_NAME_RE = re.compile(r"(_components|_probseg)\.nii(\.gz)?$|" + GIFT_RE.pattern + "|"
                           + SPM_GM_RE.pattern.lstrip("^"))


def _native_files(deriv: list[Path]) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """(subject, session, path) of GIFT-native ICN maps and SPM/CAT12-native GM volumes, and
    of folders named like an input file (pybids skips them, so they would read as missing)."""
    icn: list[tuple] = []
    gmv: list[tuple] = []
    folders: list[tuple] = []
    others = set(deriv)
    for root in deriv:
        gift_folders: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(root):
            # a dataset inside another one (derivatives/ itself) is walked on its own
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and Path(dirpath) / d not in others)
            for name in dirnames:
                rel = str((Path(dirpath) / name).relative_to(root))
                if INPUT_NAME_RE.search(name) and (sub := SUB_RE.search(rel)):
                    ses = SES_RE.search(rel)
                    folders.append((sub["subject"], ses["session"] if ses else None,
                                    str(Path(dirpath) / name)))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if GIFT_RE.search(name):
                    gift_folders.add(Path(dirpath))
                elif SPM_GM_RE.match(name):
                    rel = str(path.relative_to(root))
                    sub = SUB_RE.search(rel)
                    if sub:
                        ses = SES_RE.search(rel)
                        gmv.append((sub["subject"], ses["session"] if ses else None, str(path)))
        for folder in sorted(gift_folders):
            mapping = _gift_mapping(folder)
            for path in sorted(folder.iterdir()):
                match = GIFT_RE.search(path.name)
                if not match:
                    continue
                index, gift_ses = int(match["index"]), int(match["session"])
                key = (index, gift_ses) if (index, gift_ses) in mapping else (index, None)
                if key not in mapping:
                    raise DataError(
                        f"{path} is GIFT subject {index} session {gift_ses}, which the mapping "
                        f"TSV in {folder} does not list; add a row for gift_index {index}"
                        f"{f' and gift_session {gift_ses}' if _has_sessions(mapping) else ''}."
                    )
                subject, session = mapping[key]
                icn.append((subject, session, str(path)))
    return icn, gmv, folders


def _pybids_files(layout, kind: str, filters: dict[str, Any]) -> list[tuple]:
    if layout is None:
        return []
    query = {**DEFAULT_QUERIES[kind], **filters.get(kind, {})}
    files = layout.get(scope="derivatives", return_type="object", **query)
    out = []
    for f in files:
        ents = f.get_entities()
        if "subject" not in ents:
            continue
        name = Path(f.path).name
        if kind == "gmv" and SPM_GM_RE.match(name):
            continue  # found as a native name below
        out.append((str(ents["subject"]), ents.get("session"), f.path))
    return out


# --------------------------------------------------------------------------- discovery
def discover(cfg: Config) -> list[SubjectInputs]:
    """All selected subjects with their inputs; raises a user error for unusable selections.

    Subjects that lack a modality are logged with the reason and, following
    ``cfg.missing_modality``, dropped (``skip``), kept (``keep``), or reported as an error.
    """
    assert cfg.bids_dir is not None
    labels = read_participants(cfg.bids_dir, cfg)
    filters = (check_bids_filters(cfg.bids_filters, "bids_filters") if cfg.bids_filters
               else load_bids_filters(cfg.bids_filter_file))
    deriv = derivative_dirs(cfg)
    layout = bids_layout(cfg, deriv)

    icn_files = _pybids_files(layout, "icn", filters)
    gmv_files = _pybids_files(layout, "gmv", filters)
    native_icn, native_gmv, folders = _native_files(deriv)
    # a native name is used only where the filters do not exclude its subject/session
    icn_files += native_icn
    gmv_files += native_gmv if "gmv" not in filters else []

    wanted_sub = set(cfg.participant_label) if cfg.participant_label else None
    wanted_ses = set(cfg.session_label) if cfg.session_label else None

    def keep(sub: str, ses: str | None) -> bool:
        return (wanted_sub is None or sub in wanted_sub) and (
            wanted_ses is None or (ses in wanted_ses)
        )

    for sub, ses, path in folders:
        if keep(sub, ses) if ses else (wanted_sub is None or sub in wanted_sub):
            bad = unreadable_input(path)
            assert bad is not None
            raise bad  # a folder named like an input file: missing input, named
    icn_by: dict[tuple, list[str]] = defaultdict(list)
    for sub, ses, path in icn_files:
        if keep(sub, ses) and path not in icn_by[(sub, ses)]:
            icn_by[(sub, ses)].append(path)
    gmv_by: dict[tuple, list[str]] = defaultdict(list)
    for sub, ses, path in gmv_files:
        if (wanted_sub is None or sub in wanted_sub) and path not in gmv_by[(sub, ses)]:
            gmv_by[(sub, ses)].append(path)

    if wanted_sub:  # as fMRIPrep and MRIQC: a label that names no subject stops the run
        known = set(labels) | {s for s, _, _ in icn_files} | {s for s, _, _ in gmv_files}
        unknown = sorted(wanted_sub - known)
        if unknown:
            raise unknown_labels_error(unknown, known, cfg.bids_dir)
    keys = sorted(set(icn_by) | {k for k in gmv_by if k[1] is None or keep(*k)},
                  key=lambda k: (k[0], k[1] or ""))
    # a subject-level GMV (no session) serves every session of that subject
    keys = [k for k in keys if not (k[1] is None and any(s == k[0] and e for s, e in icn_by))]
    if not keys:
        raise no_inputs_error(cfg, deriv, "No ICN maps or GMV volumes")

    subjects: list[SubjectInputs] = []
    for sub, ses in keys:
        item = SubjectInputs(subject=sub, session=ses, label=labels.get(sub))
        icns = icn_by.get((sub, ses), [])
        gmvs = gmv_by.get((sub, ses)) or gmv_by.get((sub, None), [])
        for kind, found, other in (("icn", icns, gmvs), ("gmv", gmvs, icns)):
            if len(found) > 1:
                raise duplicate_error(item.key, kind, found, other, deriv)
        item.icn = icns[0] if icns else None
        item.gmv = gmvs[0] if gmvs else None
        if item.icn is None:
            item.missing.append("no NeuroMark ICN file found")
        if item.gmv is None:
            item.missing.append("no gray-matter (GMV) file found")
        if sub not in labels and labels_needed(cfg):
            LOG.warning("%s is not in participants.tsv: it is embedded but not classified",
                        item.key)
        subjects.append(item)

    subjects = apply_missing_policy(subjects, cfg.missing_modality,
                                    lambda what: no_inputs_error(cfg, deriv, what))
    check_readable(subjects)
    check_headers(subjects, cfg.n_components)
    if cfg.model is not None:  # refuse a model that cannot embed these inputs before any work
        from vaefusion.inputs.model_check import check_model_fits

        check_model_fits(cfg, nib.load(next(s.icn for s in subjects if s.icn)).shape)
    # the participant level lists every subject; the group level, which usually follows it,
    # counts them on the terminal and keeps the list for its log file
    log_inventory(subjects, listed=cfg.analysis_level != "group")
    return subjects


def check_readable(subjects: list[SubjectInputs]) -> None:
    """Every selected input file can be read: a dangling link, a folder in a file's place or a
    file without read permission is missing input (exit 66), named with its fix; every such
    file is logged, the first is the error."""
    errors = [(s.key, kind, bad) for s in subjects for kind, path in (("ICN", s.icn),
                                                                     ("GMV", s.gmv))
              if path is not None and (bad := unreadable_input(path)) is not None]
    for key, kind, bad in errors if len(errors) > 1 else []:
        LOG.warning("%s: %s file %s", key, kind, bad.message)
    if errors:
        key, kind, bad = errors[0]
        more = (f" ({len(errors) - 1} more unreadable input file(s) are listed in the log)"
                if len(errors) > 1 else "")
        raise type(bad)(f"{key}'s {kind} file {bad.message.rstrip('.')}{more}.")


def duplicate_error(key: str, kind: str, found: list[str], other: list[str],
                    deriv: list[Path]) -> DataError:
    """Two candidate files for one subject and input, with the fix that selects one.

    Files in different derivative datasets are told apart with ``--derivatives`` (naming the
    dataset to use for each input), files in one dataset with ``--bids-filter-file`` on the
    first entity whose values differ.
    """
    what = {"icn": "NeuroMark ICN", "gmv": "GMV"}[kind]

    def root_of(path: str) -> Path:
        return next((d for d in deriv if d in Path(path).parents), Path(path).parent)

    roots = list(dict.fromkeys(root_of(f) for f in found))
    if len(roots) > 1:
        keep = list(dict.fromkeys([roots[0], *(root_of(f) for f in other)]))
        example = " ".join(f"{d.name}={d}" for d in keep)
        return DataError(
            f"{key} has {len(found)} {what} files in different derivative datasets "
            f"({', '.join(found)}); name the datasets to use with --derivatives NAME=PATH, "
            f"e.g. --derivatives {example}"
        )
    from bids.layout import parse_file_entities

    ents = [parse_file_entities(f, config=["bids", "derivatives"]) for f in found]
    differ = [e for e in ents[0] if len({str(x.get(e)) for x in ents}) > 1]
    if differ:
        hint = json.dumps({kind: {differ[0]: ents[0][differ[0]]}})
        return DataError(
            f"{key} has {len(found)} {what} files in {roots[0]} ({', '.join(found)}); pick one "
            f"with --bids-filter-file FILE where FILE holds e.g. {hint}"
        )
    return DataError(
        f"{key} has {len(found)} {what} files in {roots[0]} ({', '.join(found)}); keep one and "
        f"move the others out of the dataset."
    )


def apply_missing_policy(subjects: list[SubjectInputs], policy: str,
                         none_left=None) -> list[SubjectInputs]:
    """Report subjects that lack a modality, then skip, keep, or refuse them; when none is
    left, raise ``none_left(what)`` (default: the selection matched no data)."""
    incomplete = [s for s in subjects if not s.complete]
    for s in incomplete:
        LOG.warning("%s lacks a modality (%s): %s", s.key, "; ".join(s.missing),
                    {"skip": "skipped", "keep": "kept with what it has",
                     "error": "error"}[policy])
    if incomplete and policy == "error":
        first = incomplete[0]
        others = f" (and {len(incomplete) - 1} other subject(s))" if len(incomplete) > 1 else ""
        raise MissingInputError(
            f"{first.key} lacks a modality ({'; '.join(first.missing)}){others}; add the files "
            f"or use --missing-modality skip."
        )
    kept = [s for s in subjects if s.complete or (policy == "keep" and s.icn is not None)]
    if not kept:
        what = ("No subject with both NeuroMark ICN maps and a GMV volume (the log says what "
                "each lacks)")
        raise none_left(what) if none_left else NoDataError(f"{what}; check the derivatives.")
    return kept


def log_inventory(subjects: list[SubjectInputs], listed: bool = True) -> None:
    """One line per subject: which modalities it has, and its label (at DEBUG, which only the
    log file shows, unless ``listed``; the terminal then gets the counts)."""
    from collections import Counter

    counts = Counter(s.label or "no label" for s in subjects)
    LOG.info("Selected %d subject(s)%s", len(subjects),
             ":" if listed else f" ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))};"
             f" the list is in the log file)")
    for s in subjects:
        LOG.log(logging.INFO if listed else logging.DEBUG, "  %-20s ICN=%-3s GMV=%-3s label=%s",
                s.key, "yes" if s.icn else "no", "yes" if s.gmv else "no", s.label or "n/a")

