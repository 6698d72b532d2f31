"""The cleaning report (``dldc report``): what was dropped, repaired and gained, in one HTML folder.

:func:`build_report` reads the stage outputs named in :class:`dldc.config.ReportConfig`
(:mod:`dldc.report.inputs`), renders the sections (:mod:`dldc.report.sections`, plots and thumbnails
in :mod:`dldc.report.graphics`) and writes ``index.html`` + ``thumbs/`` (:mod:`dldc.report.build`).
The command line is :mod:`dldc.cli_report`.
"""

from dldc.report.build import INDEX_FILE, SUMMARY_FILE, ReportResult, build_report, single_file

__all__ = ["INDEX_FILE", "SUMMARY_FILE", "ReportResult", "build_report", "single_file"]
