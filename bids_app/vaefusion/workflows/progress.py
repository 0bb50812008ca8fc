"""Progress of a running workflow: its units of work, as nipype's status callback sees them.

A unit is a node that does one piece of the work (a subject's preprocessing, a VAE fold, a PCA
baseline); the callback runs in the main process whatever the plugin, and tells the run's
:class:`~vaefusion.workflows.status.RunStatus` when each starts and ends.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from vaefusion.disk import naming
from vaefusion.errors import Interrupted
from vaefusion.workflows.status import RunStatus

#: The nodes that are units of work: a subject's preprocessing, a VAE fold, a PCA baseline.
UNIT_NODES = frozenset({"preprocess", "fold_unit", "repeat_unit"})


def count_units(wf) -> int:
    """How many unit nodes (:data:`UNIT_NODES`) the workflow expands to (their iterables)."""
    import networkx as nx

    graph = wf._graph  # nipype keeps no public accessor for the node graph
    total = 0
    for node in graph.nodes():
        if node.name not in UNIT_NODES:
            continue
        copies = 1
        for up in nx.ancestors(graph, node) | {node}:
            its = up.iterables
            if its:
                pairs = its if isinstance(its, list) else [its]
                copies *= math.prod(len(values) for _, values in pairs)
        total += copies
    return total


def subject_labels(wf) -> list[str]:
    """The participant workflow's subjects (``sub-01``...), in the order of its iterables."""
    try:
        field, values = wf.get_node("inputnode").iterables
    except (AttributeError, TypeError, ValueError):
        return []
    if field != "subject_json":
        return []
    items = [json.loads(v) for v in values]
    return [naming.subject_key(i["subject"], i.get("session")) for i in items]


def unit_label(node, subjects: list[str] | None = None) -> str:
    """A unit's name for progress lines: the cross-validation unit or the subject.

    A node's inputs from upstream nodes are set only when it runs (in a worker, for
    MultiProc), so a subject is found by its branch: nipype numbers the copies of an
    iterable's branch ``.a00``, ``.a01``... in the order of the iterable's values.
    """
    from nipype.interfaces.base import isdefined

    inputs = node.inputs

    def get(name: str):
        value = getattr(inputs, name, None)
        return value if isdefined(value) else None

    if node.name == "fold_unit" and None not in (get("method"), get("latent_dim"), get("seed"),
                                                 get("fold")):
        return naming.unit_name(get("method"), get("latent_dim"), get("seed"),
                                get("repeat") or 0, get("fold"))
    if node.name == "repeat_unit" and None not in (get("method"), get("latent_dim")):
        return naming.unit_name(get("method"), get("latent_dim"), get("seed") or 0,
                                get("repeat") or 0)
    if get("subject"):
        return naming.subject_key(get("subject"), get("session"))
    branch = re.search(r"\.a(\d+)$", node.itername)
    if subjects and branch and int(branch.group(1)) < len(subjects):
        return subjects[int(branch.group(1))]
    return node.itername


@dataclass
class RunNodes:
    """What one run's workflow engine did, as the status callback saw it: the folders of the
    nodes it started (so that the error records of a concurrent run sharing the work dir are
    not read as this run's) and the units that failed (a subject, a fold), in order."""

    folders: set[Path] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)


def status_callback(status: RunStatus | None, train_root: Path, subjects: list[str],
                    nodes: RunNodes | None = None):
    """nipype's ``status_callback`` (called in the main process): units started and ended go
    to ``status`` (a VAE fold's epochs are read from its progress file under ``train_root``),
    the run's nodes and failed units to ``nodes``, and an interrupt that a node swallowed is
    raised again."""
    names: dict[int, str] = {}

    def callback(node, event: str) -> None:
        if Interrupted.pending is not None:  # a node swallowed it (nipype catches everything)
            raise Interrupted(Interrupted.pending.signum)
        if nodes is not None:
            if event == "start":
                nodes.folders.add(Path(node.output_dir()))
            elif event == "exception":
                nodes.failed.append(unit_label(node, subjects))
        if status is None or node.name not in UNIT_NODES:
            return
        if event == "start":
            name = names[id(node)] = unit_label(node, subjects)
            progress = (train_root / name / naming.UNIT_PROGRESS if node.name == "fold_unit"
                        else None)
            status.unit_started(name, progress)
            return
        name = names.pop(id(node), None) or unit_label(node, subjects)
        status.unit_finished(name, ok=event == "end")

    return callback
