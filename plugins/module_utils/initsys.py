# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Init-system detection: what, if anything, starts the apps again after a container restart.

``detect()`` only reads files (``<proc>/*/comm``, ``<proc>/*/cmdline`` and a few paths under ``root``),
so tests run it against fixture trees. The kinds, in order of preference:

- ``systemd``: PID 1 is ``systemd`` and ``/run/systemd/system`` is a directory -> install a unit
  (``boot_dir`` ``/etc/systemd/system``).
- ``s6``: PID 1 is ``s6-svscan`` or ``/run/s6`` or ``/package/admin/s6-overlay`` exists, and ``/usr/start``
  exists (Sealos images run every script there at boot) -> ``boot_dir`` ``/usr/start``.
- ``cron``: a ``supercronic``, ``cron`` or ``crond`` process runs. Vixie cron's ``/etc/crontab`` has a
  user column and supports ``@reboot`` (``crontab_format`` ``system``); supercronic reads only the file it
  was given, in the 5-field format with no user column, and has no ``@reboot`` (``crontab_format``
  ``supercronic``): there a job must run every minute and start the apps only when they are down.
- ``none``: nothing will restart the apps; ``reason`` says why.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.devbox.ops.plugins.module_utils.errors import bad_value

KINDS = ("systemd", "s6", "cron", "none")
CHOICES = ("auto",) + KINDS
CRON_NAMES = ("supercronic", "cron", "crond")  # order of preference when several run
SYSTEM_CRONTAB = "/etc/crontab"
S6_BOOT_DIR = "/usr/start"
SYSTEMD_UNIT_DIR = "/etc/systemd/system"
S6_MARKERS = ("/run/s6", "/package/admin/s6-overlay")


def validate_kind(value):
    """Return ``value`` if it is a valid ``init_system`` choice, else raise DevboxOpsError."""
    if value not in CHOICES:
        raise bad_value("init_system", value, "must be one of %s" % ", ".join(CHOICES))
    return value


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (IOError, OSError):
        return None


def _under(root, path):
    return os.path.join(root, path.lstrip("/"))


def _pids(proc):
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def _comm(proc, pid):
    data = _read(os.path.join(proc, str(pid), "comm"))
    return data.decode("utf-8", "replace").strip() if data is not None else None


def _supercronic_crontab(proc, pid):
    """The crontab file supercronic was started with: its last non-option argument."""
    raw = _read(os.path.join(proc, str(pid), "cmdline")) or b""
    args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a][1:]
    files = [a for a in args if not a.startswith("-")]
    if not files:
        return SYSTEM_CRONTAB
    path = files[-1]
    if not os.path.isabs(path):
        try:
            path = os.path.join(os.readlink(os.path.join(proc, str(pid), "cwd")), path)
        except OSError:
            return path
    return os.path.normpath(path)


def _find_cron(proc):
    """(name, pid) of the preferred running cron daemon, or (None, None)."""
    found = {}
    for pid in _pids(proc):
        name = _comm(proc, pid)
        if name in CRON_NAMES and name not in found:
            found[name] = pid
    for name in CRON_NAMES:
        if name in found:
            return name, found[name]
    return None, None


def cron_fields(name, crontab=None):
    """The cron part of the result for a cron daemon ``name`` (None when no cron runs)."""
    if name is None:
        return {"cron": None, "crontab": None, "crontab_format": None, "cron_reboot": False}
    supercronic = name == "supercronic"
    return {
        "cron": name,
        "crontab": crontab or SYSTEM_CRONTAB,
        "crontab_format": "supercronic" if supercronic else "system",
        "cron_reboot": not supercronic,
    }


def boot_dir(kind):
    return {"systemd": SYSTEMD_UNIT_DIR, "s6": S6_BOOT_DIR}.get(kind)


def detect(root="/", proc="/proc"):
    """Detect the init system. Returns a dict with ``kind``, ``pid1`` (PID 1's comm or None), ``cron``,
    ``crontab``, ``crontab_format``, ``cron_reboot`` (whether ``@reboot`` lines run), ``boot_dir`` and
    ``reason``. Paths in the result are paths on the host, not under ``root``."""
    pid1 = _comm(proc, 1)
    cron, cron_pid = _find_cron(proc)
    crontab = _supercronic_crontab(proc, cron_pid) if cron == "supercronic" else None
    info = {"pid1": pid1}
    info.update(cron_fields(cron, crontab))
    s6_marker = [m for m in S6_MARKERS if os.path.exists(_under(root, m))]
    has_start_dir = os.path.isdir(_under(root, S6_BOOT_DIR))
    notes = []

    if pid1 == "systemd" and os.path.isdir(_under(root, "/run/systemd/system")):
        kind = "systemd"
        reason = "PID 1 is systemd and /run/systemd/system exists: a systemd unit starts the apps at boot"
    elif (pid1 == "s6-svscan" or s6_marker) and has_start_dir:
        kind = "s6"
        what = "PID 1 is s6-svscan" if pid1 == "s6-svscan" else "s6-overlay found (%s)" % s6_marker[0]
        reason = "%s and %s exists: a script there starts the apps at boot" % (what, S6_BOOT_DIR)
    else:
        if pid1 == "s6-svscan" or s6_marker:
            notes.append("s6 is present but %s does not exist" % S6_BOOT_DIR)
        if cron:
            kind = "cron"
            if info["cron_reboot"]:
                how = "an @reboot line (with a user column) starts the apps at boot"
            else:
                how = ("supercronic has no @reboot and no user column: a 5-field job every minute must start "
                       "the apps when they are not running")
            reason = "%s runs and reads %s: %s" % (cron, info["crontab"], how)
        else:
            kind = "none"
            reason = ("PID 1 is %s and no cron runs (looked for %s): nothing will restart the apps after a "
                      "container restart" % (pid1 or "unknown", ", ".join(CRON_NAMES)))
    if notes:
        reason = "%s; %s" % (reason, "; ".join(notes))
    info.update(kind=kind, boot_dir=boot_dir(kind), reason=reason)
    return info


def resolve(init_system, detected):
    """The effective init info for an ``init_system`` choice: ``detected`` itself for ``auto``, else
    ``detected`` with the kind forced (and the boot_dir/crontab that kind uses)."""
    validate_kind(init_system)
    if init_system in ("auto", detected["kind"]):
        return dict(detected)
    info = dict(detected, kind=init_system, boot_dir=boot_dir(init_system))
    if init_system == "cron" and not detected["cron"]:
        info.update(cron_fields("cron"))
        info["cron"] = None  # forced: no cron daemon was seen running
    info["reason"] = "forced by init_system=%s (detected %s: %s)" % (
        init_system, detected["kind"], detected["reason"])
    if init_system == "none":
        info["reason"] = ("forced by init_system=none: nothing will restart the apps after a container "
                          "restart (detected %s)" % detected["kind"])
    return info
