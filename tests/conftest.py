# SPDX-License-Identifier: GPL-3.0-or-later
"""Make ``ansible_collections.devbox.ops`` importable from this checkout.

The repository root is the collection root; ``.collections/ansible_collections/devbox/ops`` links back
to it (the Makefile makes the link, and so does this file when it is missing).
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, ".collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "devbox", "ops")

if not os.path.exists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink(REPO, LINK)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)


# ------------------------------------------------------------------ time per test file
# Workers take whole files (``--dist loadfile``), so the wall time of a run is bounded below by its
# slowest file: the summary lists each file's total (setup + call + teardown), the longest first, to show
# where a split or a cut pays. With xdist the reports reach the controller, so the totals are complete.
FILE_SECONDS = {}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    FILE_SECONDS[path] = FILE_SECONDS.get(path, 0.0) + (report.duration or 0.0)


def pytest_terminal_summary(terminalreporter):
    if len(FILE_SECONDS) < 2:
        return
    terminalreporter.section("seconds per test file")
    for path, seconds in sorted(FILE_SECONDS.items(), key=lambda item: -item[1]):
        terminalreporter.write_line("%8.1f s  %s" % (seconds, path))
