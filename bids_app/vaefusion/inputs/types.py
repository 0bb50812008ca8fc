"""The types that the input modules share: what discovery found for one subject.

A module of its own, so that discovery, the header checks and participants.tsv all depend on
it and never on each other's types (no import cycle, not even for the type checker).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class SubjectInputs:
    """The input files of one subject (and session) and its label."""

    subject: str
    session: str | None = None
    icn: str | None = None
    gmv: str | None = None
    label: str | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def complete(self) -> bool:
        return self.icn is not None and self.gmv is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SubjectInputs:
        return cls(**json.loads(text))
