# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Resource metrics of a devbox, measured against the *container's* limits, and threshold levels.

Inside a container ``/proc/meminfo`` and ``/proc/stat`` describe the host, so the limits come from
the cgroup files of this process:

- cgroup v2 (``0::/path`` in ``/proc/self/cgroup``): ``memory.max`` (``max`` = unlimited),
  ``memory.current``, ``memory.stat``, ``cpu.max`` (``quota period`` or ``max period``), ``cpu.stat``;
- cgroup v1: ``memory/<path>/memory.limit_in_bytes`` (a huge value = unlimited),
  ``memory.usage_in_bytes``, ``memory.stat``, ``cpu/<path>/cpu.cfs_quota_us`` (-1 = unlimited) and
  ``cpu.cfs_period_us``, ``cpuacct/<path>/cpuacct.usage``.

The limit in force is the smallest one from the process's cgroup up to the root (a container's limit
usually sits on a parent of the cgroup its processes are in). Memory "used" is the working set, as
``kubectl top`` and cAdvisor count it: usage minus ``inactive_file`` (page cache the kernel reclaims
before it would OOM-kill anything).

psutil is imported only when metrics are collected; the module has no Ansible import, so the on-host
watchdog uses it as is.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import os
import time

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"
V1_UNLIMITED = 1 << 60  # v1 writes "no limit" as PAGE_COUNTER_MAX pages (about 9.2e18 bytes)

LEVELS = ("ok", "warning", "critical")
DEFAULT_THRESHOLDS = {
    "cpu": {"warning": 80.0, "critical": 95.0},
    "memory": {"warning": 80.0, "critical": 95.0},
    "disk": {"warning": 85.0, "critical": 95.0},
    "load_per_core": {"warning": 1.5, "critical": 3.0},
}
PERCENT_METRICS = ("cpu", "memory", "disk")

# Mounts that hold no user data (or are always full, like squashfs images); skipped unless asked for.
PSEUDO_FS = frozenset((
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts", "devtmpfs",
    "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs", "proc", "pstore", "ramfs", "rpc_pipefs",
    "securityfs", "selinuxfs", "squashfs", "sysfs", "tmpfs", "tracefs", "fuse.lxcfs", "fuse.gvfsd-fuse",
    "fuse.portal",
))


def _psutil():
    try:
        import psutil  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise DevboxOpsError("the Python library psutil is required on the host to collect metrics "
                             "(Debian: apt-get install python3-psutil; pip: pip install psutil)")
    return psutil


# --------------------------------------------------------------------------------------- cgroups

def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (IOError, OSError, UnicodeDecodeError):
        return None


def _read_int(path):
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _read_stat(path):
    """``key value`` lines (memory.stat, cpu.stat) as a dict of ints."""
    stats = {}
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            stats[parts[0]] = int(parts[1])
    return stats


def parse_proc_cgroup(text):
    """``/proc/<pid>/cgroup`` -> (``{v1 controller: (mount dir name, path)}``, v2 path or None)."""
    v1, v2 = {}, None
    for line in (text or "").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:
            v2 = path
            continue
        for controller in controllers.split(","):
            if controller:
                v1[controller] = (controllers, path)
    return v1, v2


def _chain(base, path):
    """Directories from the cgroup of ``path`` under ``base`` up to ``base`` itself.

    Without a cgroup namespace a container sees its host-side path (``/kubepods/.../<id>``) in
    ``/proc/self/cgroup`` while its own cgroup is mounted as the root: leading parts of the path are
    dropped until it exists under ``base``.
    """
    parts = [p for p in (path or "").split("/") if p and p not in (".", "..")]
    while parts and not os.path.isdir(os.path.join(base, *parts)):
        parts = parts[1:]
    return [os.path.join(base, *parts[:depth]) for depth in range(len(parts), 0, -1)] + [base]


def _v1_base(root, v1, controller):
    """The mount directory of a v1 controller (``memory``, ``cpu,cpuacct`` or ``cpu``...)."""
    if controller not in v1:
        return None, None
    joined, path = v1[controller]
    for name in (joined, controller, "cpu,cpuacct", "cpuacct,cpu"):
        if (controller in name.split(",")) and os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name), path
    return None, None


def _smallest(dirs, read_limit):
    """(limit, dir) of the smallest limit along ``dirs``, or (None, None) when none is set."""
    best = (None, None)
    for directory in dirs:
        limit = read_limit(directory)
        if limit is not None and (best[0] is None or limit < best[0]):
            best = (limit, directory)
    return best


def _v2_memory_limit(directory):
    text = _read(os.path.join(directory, "memory.max"))
    return int(text) if text and text.isdigit() else None


def _v2_cpu_limit(directory):
    fields = (_read(os.path.join(directory, "cpu.max")) or "").split()
    if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit() and int(fields[1]) > 0:
        return int(fields[0]) / float(fields[1])
    return None


def _v1_memory_limit(directory):
    value = _read_int(os.path.join(directory, "memory.limit_in_bytes"))
    return value if value is not None and 0 < value < V1_UNLIMITED else None


def _v1_cpu_limit(directory):
    quota = _read_int(os.path.join(directory, "cpu.cfs_quota_us"))
    period = _read_int(os.path.join(directory, "cpu.cfs_period_us"))
    if quota is not None and quota > 0 and period:
        return quota / float(period)
    return None


def _empty(version, cgroup):
    return {"version": version, "cgroup": cgroup, "memory_limit": None, "memory_usage": None,
            "memory_inactive_file": None, "memory_used": None, "cpu_limit_cores": None,
            "sources": {"memory_limit": None, "memory_usage": None, "cpu_limit": None, "cpu_usage": None}}


def _memory(result, dirs, limit_of, limit_file, usage_file, inactive_keys):
    limit, at = _smallest(dirs, limit_of)
    # Usage of the cgroup that holds the limit (it covers every process of the container); without
    # a limit, usage of the process's own cgroup.
    for directory in ([at] if at else []) + dirs:
        usage = _read_int(os.path.join(directory, usage_file))
        if usage is None:
            continue
        stat = _read_stat(os.path.join(directory, "memory.stat"))
        inactive = next((stat[k] for k in inactive_keys if k in stat), 0)
        result.update(memory_usage=usage, memory_inactive_file=inactive,
                      memory_used=max(0, usage - inactive))
        result["sources"]["memory_usage"] = os.path.join(directory, usage_file)
        break
    if limit is not None:
        result["memory_limit"] = limit
        result["sources"]["memory_limit"] = os.path.join(at, limit_file)


def _v2(result, root, path):
    dirs = _chain(root, path)
    _memory(result, dirs, _v2_memory_limit, "memory.max", "memory.current", ("inactive_file",))
    cores, at = _smallest(dirs, _v2_cpu_limit)
    if cores is not None:
        usage = os.path.join(at, "cpu.stat")
        result["cpu_limit_cores"] = round(cores, 3)
        result["sources"].update(cpu_limit=os.path.join(at, "cpu.max"),
                                 cpu_usage=usage if os.path.isfile(usage) else None)


def _v1(result, root, v1):
    mem_base, mem_path = _v1_base(root, v1, "memory")
    if mem_base is not None:
        _memory(result, _chain(mem_base, mem_path), _v1_memory_limit, "memory.limit_in_bytes",
                "memory.usage_in_bytes", ("total_inactive_file", "inactive_file"))
    cpu_base, cpu_path = _v1_base(root, v1, "cpu")
    cores, at = _smallest(_chain(cpu_base, cpu_path), _v1_cpu_limit) if cpu_base else (None, None)
    if cores is not None:
        result["cpu_limit_cores"] = round(cores, 3)
        result["sources"]["cpu_limit"] = os.path.join(at, "cpu.cfs_quota_us")
        acct_base = _v1_base(root, v1, "cpuacct")[0]
        if acct_base is not None:  # the cgroup of the limit, in the cpuacct hierarchy
            usage = os.path.normpath(os.path.join(acct_base, os.path.relpath(at, cpu_base), "cpuacct.usage"))
            result["sources"]["cpu_usage"] = usage if os.path.isfile(usage) else None


def cgroup_limits(root=CGROUP_ROOT, proc_self_cgroup=PROC_SELF_CGROUP):
    """The memory and CPU limits of this process's container, read from the cgroup files.

    Returns ``version`` (1, 2 or None when no cgroup files are found), ``cgroup`` (the process's
    cgroup path), ``memory_limit`` (bytes, None = unlimited), ``memory_usage`` (bytes, page cache
    included), ``memory_inactive_file``, ``memory_used`` (usage minus inactive_file),
    ``cpu_limit_cores`` (None = unlimited) and ``sources``, the files each figure came from
    (``cpu_usage`` is the CPU time counter of the cgroup that holds the CPU limit).

    A v1 memory or cpu controller wins over v2: on hybrid machines the v2 tree holds no controller.
    """
    v1, v2 = parse_proc_cgroup(_read(proc_self_cgroup))
    if _v1_base(root, v1, "memory")[0] or _v1_base(root, v1, "cpu")[0]:
        result = _empty(1, (v1.get("memory") or v1.get("cpu"))[1])
        _v1(result, root, v1)
    elif v2 is not None and os.path.isfile(os.path.join(root, "cgroup.controllers")):
        result = _empty(2, v2)
        _v2(result, root, v2)
    else:
        result = _empty(None, None)
    return result


def cgroup_cpu_seconds(limits):
    """CPU seconds used so far by the cgroup in ``limits['sources']['cpu_usage']``, or None."""
    path = (limits.get("sources") or {}).get("cpu_usage")
    if not path:
        return None
    if path.endswith("cpuacct.usage"):
        nanoseconds = _read_int(path)
        return nanoseconds / 1e9 if nanoseconds is not None else None
    usec = _read_stat(path).get("usage_usec")
    return usec / 1e6 if usec is not None else None


# --------------------------------------------------------------------------------------- collect

def _check_int(param, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad_value(param, value, "must be an integer >= %d" % minimum)
    return value


def _check_number(param, value):
    """A finite float from an int, a float or a numeric string (templated values arrive as text)."""
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None or math.isnan(number) or math.isinf(number):
        raise bad_value(param, value, "must be a number")
    return number


def _check_paths(disk_paths):
    if disk_paths is None:
        return None
    if not isinstance(disk_paths, (list, tuple)):
        raise bad_value("disk_paths", disk_paths, "must be a list of absolute paths")
    for path in disk_paths:
        if not isinstance(path, str) or not os.path.isabs(path):
            raise bad_value("disk_paths", path, "must be an absolute path")
        if not os.path.exists(path):
            raise bad_value("disk_paths", path, "does not exist")
    return list(disk_paths)


def _check_pm2(pm2_processes):
    if pm2_processes is None:
        return None
    if not isinstance(pm2_processes, (list, tuple)) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) for p in pm2_processes):
        raise DevboxOpsError("pm2_processes: must be a list of PM2 processes (dicts with a name), as "
                             "PM2Client.jlist() returns", param="pm2_processes")
    return list(pm2_processes)


def _mount_point(path):
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def _disks(psutil, disk_paths):
    if disk_paths is not None:
        targets = [(path, _mount_point(path), None, None) for path in disk_paths]
    else:
        seen, targets = set(), []
        parts = [p for p in psutil.disk_partitions(all=True) if p.fstype not in PSEUDO_FS]
        for part in sorted(parts, key=lambda p: (len(p.mountpoint), p.mountpoint)):
            try:
                dev = os.stat(part.mountpoint).st_dev
            except OSError:
                continue
            if dev not in seen:  # bind mounts of one filesystem: report its shortest mount point
                seen.add(dev)
                targets.append((part.mountpoint, part.mountpoint, part.device, part.fstype))
    disks = []
    for path, mount, device, fstype in targets:
        try:
            usage = psutil.disk_usage(path)
        except OSError:
            continue
        if usage.total == 0:
            continue
        disks.append({"path": path, "mount": mount, "device": device, "fstype": fstype, "total": usage.total,
                      "used": usage.used, "free": usage.free, "percent": round(usage.percent, 1)})
    return disks


def _sample_processes(psutil, interval, limits):
    """Sample CPU of every process, of the host and of the cgroup over one ``interval``."""
    procs = {}
    for proc in psutil.process_iter():
        try:
            proc.cpu_percent(None)
            procs[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    psutil.cpu_percent(None)
    cg_start, started = cgroup_cpu_seconds(limits), time.monotonic()
    time.sleep(interval)
    host_percent = psutil.cpu_percent(None)
    cg_end, elapsed = cgroup_cpu_seconds(limits), time.monotonic() - started
    table = {}
    for pid, proc in procs.items():
        try:
            with proc.oneshot():
                # name() is the program name only; the cmdline (arguments, maybe secrets) is never read.
                table[pid] = {"pid": pid, "name": proc.name(), "cpu": round(proc.cpu_percent(None), 1),
                              "rss": proc.memory_info().rss}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    cg_cores = (cg_end - cg_start) / elapsed if cg_start is not None and cg_end is not None else None
    return table, host_percent, cg_cores


def _pm2_usage(psutil, pm2_processes, table):
    apps = {}
    for proc in pm2_processes:
        app = apps.setdefault(proc["name"], {"name": proc["name"], "instances": 0, "online": 0,
                                             "processes": 0, "cpu": 0.0, "rss": 0})
        app["instances"] += 1
        app["online"] += 1 if proc.get("status") == "online" else 0
        pid = proc.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            continue
        pids = [pid]
        try:
            pids += [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
        for each in pids:
            row = table.get(each)
            if row is None:  # started during the sample: no CPU figure, but count its memory
                try:
                    row = {"cpu": 0.0, "rss": psutil.Process(each).memory_info().rss}
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            app["processes"] += 1
            app["cpu"] = round(app["cpu"] + row["cpu"], 1)
            app["rss"] += row["rss"]
    return [apps[name] for name in sorted(apps)]


def collect(pm2_processes=None, disk_paths=None, top=5, interval=0.2, cgroup_root=CGROUP_ROOT,
            proc_self_cgroup=PROC_SELF_CGROUP):
    """One snapshot of the host's resources, measured against the container's limits.

    Returns a dict with ``cpu``, ``load``, ``memory``, ``disk``, ``top``, ``pm2`` (None unless
    ``pm2_processes`` is given) and ``cgroup`` (what :func:`cgroup_limits` read). Process entries carry
    pid, name, cpu and rss only: never the command line, which can hold secrets.
    """
    top = _check_int("top", top, 0)
    interval = _check_number("interval", interval)
    if not 0 < interval <= 60:
        raise bad_value("interval", interval, "must be more than 0 and at most 60 seconds")
    disk_paths = _check_paths(disk_paths)
    pm2_processes = _check_pm2(pm2_processes)
    psutil = _psutil()

    limits = cgroup_limits(cgroup_root, proc_self_cgroup)
    table, host_percent, cg_cores = _sample_processes(psutil, interval, limits)
    host_cores = psutil.cpu_count() or 1

    cpu_limit = limits["cpu_limit_cores"]
    if cpu_limit and cpu_limit < host_cores and cg_cores is not None:
        cpu = {"percent": round(cg_cores / cpu_limit * 100, 1), "cores": cpu_limit, "limit_source": "cgroup"}
    else:
        cpu = {"percent": round(host_percent, 1), "cores": host_cores, "limit_source": "host"}
    cpu["host_cores"] = host_cores

    vm = psutil.virtual_memory()
    mem_limit = limits["memory_limit"]
    if mem_limit and mem_limit < vm.total and limits["memory_used"] is not None:
        memory = {"used": limits["memory_used"], "limit": mem_limit, "limit_source": "cgroup"}
    else:
        memory = {"used": vm.total - vm.available, "limit": vm.total, "limit_source": "host"}
    memory["percent"] = round(memory["used"] * 100.0 / memory["limit"], 1) if memory["limit"] else 0.0
    memory["available"] = max(0, memory["limit"] - memory["used"])
    memory["host_total"] = vm.total

    # The load average is the host's (it is not namespaced), so it is divided by the host's cores.
    loads = os.getloadavg()
    load = {"load1": loads[0], "load5": loads[1], "load15": loads[2], "cores": host_cores,
            "per_core": {"load1": round(loads[0] / host_cores, 2), "load5": round(loads[1] / host_cores, 2),
                         "load15": round(loads[2] / host_cores, 2)}}

    rows = list(table.values())
    by_cpu = sorted(rows, key=lambda r: (-r["cpu"], -r["rss"], r["pid"]))[:top]
    by_rss = sorted(rows, key=lambda r: (-r["rss"], r["pid"]))[:top]
    return {
        "cpu": cpu,
        "load": load,
        "memory": memory,
        "disk": _disks(psutil, disk_paths),
        "top": {"cpu": by_cpu, "rss": by_rss},
        "pm2": _pm2_usage(psutil, pm2_processes, table) if pm2_processes is not None else None,
        "cgroup": limits,
        "interval": interval,
        "time": time.time(),
    }


# --------------------------------------------------------------------------------------- evaluate

def check_thresholds(thresholds=None, param="thresholds"):
    """Validated thresholds: the defaults, with what ``thresholds`` gives on top.

    ``thresholds`` maps a metric (cpu, memory, disk, load_per_core) to ``{warning, critical}``; a
    missing or None value keeps the default.
    """
    if thresholds is None:
        thresholds = {}
    if not isinstance(thresholds, dict):
        raise bad_value(param, thresholds, "must be a dict of metric: {warning, critical}")
    merged = {}
    for metric, defaults in DEFAULT_THRESHOLDS.items():
        given = thresholds.get(metric)
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise bad_value("%s.%s" % (param, metric), given, "must be a dict with warning and critical")
        extra = sorted(set(given) - set(("warning", "critical")))
        if extra:
            raise bad_value("%s.%s" % (param, metric), given, "unknown key(s) %s; use warning and critical"
                            % ", ".join(map(str, extra)))
        levels = {}
        for level in ("warning", "critical"):
            name = "%s.%s.%s" % (param, metric, level)
            value = defaults[level] if given.get(level) is None else _check_number(name, given[level])
            if value < 0:
                raise bad_value(name, given[level], "must not be negative")
            if metric in PERCENT_METRICS and value > 100:
                raise bad_value(name, given[level], "is a percent: it must be at most 100")
            levels[level] = value
        if levels["warning"] > levels["critical"]:
            raise bad_value("%s.%s.warning" % (param, metric), levels["warning"],
                            "must not be above %s.%s.critical (%g)" % (param, metric, levels["critical"]))
        merged[metric] = levels
    unknown = sorted(set(thresholds) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise bad_value(param, unknown[0] if len(unknown) == 1 else unknown,
                        "unknown metric; choose from %s" % ", ".join(DEFAULT_THRESHOLDS))
    return merged


def _level(value, limits):
    if value >= limits["critical"]:
        return "critical"
    if value >= limits["warning"]:
        return "warning"
    return "ok"


def _size(num):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num) < 1024 or unit == "TiB":
            return "%.1f %s" % (num, unit) if unit != "B" else "%d B" % num
        num /= 1024.0
    return str(num)


def _targets(metrics):
    """(metric, target, value, description) for each figure that has a threshold."""
    cpu, memory, load = metrics.get("cpu"), metrics.get("memory"), metrics.get("load")
    if cpu:
        yield "cpu", "cpu", cpu["percent"], "%.1f%% of %g cores (%s)" % (
            cpu["percent"], cpu["cores"], cpu["limit_source"])
    if memory:
        yield "memory", "memory", memory["percent"], "%.1f%% (%s of %s, %s limit)" % (
            memory["percent"], _size(memory["used"]), _size(memory["limit"]), memory["limit_source"])
    for disk in metrics.get("disk") or []:
        yield "disk", disk["mount"], disk["percent"], "%.1f%% of %s used on %s" % (
            disk["percent"], _size(disk["total"]), disk["mount"])
    if load:
        value = load["per_core"]["load5"]
        yield "load_per_core", "load5", value, "5-minute load %.2f per core (%.2f on %d cores)" % (
            value, load["load5"], load["cores"])


def evaluate(metrics, thresholds=None):
    """Levels (ok, warning, critical) of each metric of :func:`collect`'s result.

    Returns ``levels`` (metric -> level; disk is its fullest mount), ``level`` (the worst),
    ``checks`` (one per figure: metric, target, value, level, warning, critical, message) and
    ``warnings`` (the messages of the checks not at ok).
    """
    limits = check_thresholds(thresholds)
    if not isinstance(metrics, dict):
        raise bad_value("metrics", type(metrics).__name__, "must be the dict collect() returns")
    checks, levels = [], {}
    for metric, target, value, text in _targets(metrics):
        level = _level(value, limits[metric])
        checks.append({"metric": metric, "target": target, "value": value, "level": level,
                       "warning": limits[metric]["warning"], "critical": limits[metric]["critical"],
                       "message": "%s %s: %s; warning at %g, critical at %g" % (
                           metric, level, text, limits[metric]["warning"], limits[metric]["critical"])})
        if LEVELS.index(level) >= LEVELS.index(levels.get(metric, "ok")):
            levels[metric] = level
    level = max(levels.values(), key=LEVELS.index) if levels else "ok"
    return {"levels": levels, "level": level, "checks": checks,
            "warnings": [c["message"] for c in checks if c["level"] != "ok"]}
