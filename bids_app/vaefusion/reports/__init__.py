"""Figures (matplotlib, nilearn) and the HTML reports a person opens first.

``figures`` and ``brainmaps`` draw, ``html`` assembles self-contained pages (images embedded,
no external URL), ``group`` writes the group level's interpretation and ``group/report.html``,
and ``subject`` the per-subject ``sub-<label>.html`` at the output root (as fMRIPrep does).
NiPreps' nireports was considered: its report template loads jQuery and Bootstrap from CDNs
and it depends on templateflow (run-time downloads), so the pages are assembled here.
"""
