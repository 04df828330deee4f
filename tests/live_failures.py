"""A pytest plugin that writes each failure, traceback included, to a file the moment it happens.

pytest prints failures at the end of the session, so a run killed by a time limit (the GPU check's
steps run under ``timeout``) says which tests failed but never why. With ``-p live_failures`` and
``GYMLAB_FAILURE_LOG=FILE``, every failed or erroring test appends its id and report to FILE as it
ends, from the main process and from each xdist worker alike.
"""

from __future__ import annotations

import os

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Append a failed setup, call or teardown to the log file, if one is named."""
    path = os.environ.get("GYMLAB_FAILURE_LOG")
    if not path or not report.failed:
        return
    text = f"===== {report.nodeid} ({report.when}, {report.duration:.1f} s)\n{report.longreprtext}\n"
    captured = "\n".join(f"--- {name}\n{content}" for name, content in report.sections if content.strip())
    with open(path, "a", encoding="utf-8") as log:
        log.write(text + (captured[-8000:] + "\n" if captured else ""))
