"""What the group level's interpretation computed and wrote, as one typed object: a module of
its own below ``reports/``, so that the report's sections can type it (``reports/group.py``
builds it, ``reports/group_page.py`` reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vaefusion.interpret.explain import ExplainedModel
from vaefusion.interpret.importance import ModalityImportance
from vaefusion.interpret.latent_space import LatentMap
from vaefusion.interpret.maps import GroupMaps, MapFiles


@dataclass
class GroupInterpretation:
    """What the interpretation computed and wrote."""

    explained: ExplainedModel | None
    ranking: list[ModalityImportance]
    maps: GroupMaps | None = None
    map_files: MapFiles | None = None
    layout: LatentMap | None = None
    figures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG (group/figures/)
    report: Path | None = None
    subject_reports: list[Path] = field(default_factory=list)
