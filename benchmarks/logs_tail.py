# SPDX-License-Identifier: GPL-3.0-or-later
"""The last lines of a big log: logs.tail (from the end, in blocks) vs the naive way, measured in one run.

Writes a log of --mb MB (plain text lines with levels and ISO times) plus a rotated .1 and .gz, then, for
--rounds rounds, times:
(a) logs.tail for the last 50 lines, (b) logs.tail for the last 50 ERROR lines of the last hour
(the errors are rare, so it reads more), and (c) the naive way: read the whole file, splitlines, keep the
last 50 (what `open(path).read().splitlines()[-50:]` or Ansible's slurp does), and (d) the naive filter:
read everything, keep lines containing ' ERROR ', last 50.
Prints the median wall time and the bytes read of each. Target: (a) >= 50x faster than (c).

Usage: .venv/bin/python benchmarks/logs_tail.py [--mb 200] [--rounds 5] [--workdir DIR]
"""
import argparse
import datetime
import gzip
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, ".collections"))

from ansible_collections.devbox.ops.plugins.module_utils import logs  # noqa: E402 pylint: disable=wrong-import-position


def make_log(path, megabytes):
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=6)
    line_count = megabytes * 1024 * 1024 // 100
    step = 6 * 3600.0 / line_count
    with open(path, "w") as handle:
        for i in range(line_count):
            stamp = (start + datetime.timedelta(seconds=i * step)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            level = "ERROR" if i % 5000 == 0 else "INFO"
            handle.write("%s %s GET /api/items/%08d 200 12ms user=u%05d padding-padding\n" % (stamp, level, i, i % 99999))
    return line_count


def timed(func, rounds):
    times, result = [], None
    for _unused in range(rounds):
        started = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir")
    opts = parser.parse_args()
    work = tempfile.mkdtemp(prefix="devbox-ops-logs-bench-", dir=opts.workdir)
    try:
        path = os.path.join(work, "api.out.log")
        count = make_log(path, opts.mb)
        with open(os.path.join(work, "api.out.log.1"), "w") as handle:
            handle.write("2020-01-01T00:00:00Z INFO older\n" * 1000)
        with gzip.open(os.path.join(work, "api.out.log.2.gz"), "wt") as handle:
            handle.write("2019-01-01T00:00:00Z INFO oldest\n" * 1000)
        size = os.path.getsize(path)
        print("log: %d lines, %.0f MB (+ rotated .1 and .2.gz)" % (count, size / 1e6))

        def ours():
            return logs.tail(path, logs.LogFilter(lines=50))

        def ours_filtered():
            return logs.tail(path, logs.LogFilter(lines=50, level="error", since="1h"))

        def naive():
            with open(path, "rb") as handle:
                return handle.read().splitlines()[-50:]

        def naive_filtered():
            with open(path, "rb") as handle:
                return [ln for ln in handle.read().splitlines() if b" ERROR " in ln][-50:]

        rows = []
        t_ours, r_ours = timed(ours, opts.rounds)
        t_filt, r_filt = timed(ours_filtered, opts.rounds)
        t_naive, r_naive = timed(naive, opts.rounds)
        t_nfilt, r_nfilt = timed(naive_filtered, opts.rounds)
        assert [e["line"].encode() for e in r_ours["lines"]] == r_naive, "tail differs from the naive read"
        rows.append(("logs.tail, last 50", t_ours, r_ours["scanned_bytes"], len(r_ours["lines"])))
        rows.append(("logs.tail, last 50 ERROR of 1h", t_filt, r_filt["scanned_bytes"], len(r_filt["lines"])))
        rows.append(("naive read + splitlines, last 50", t_naive, size, len(r_naive)))
        rows.append(("naive read + filter ERROR, last 50", t_nfilt, size, len(r_nfilt)))
        print("%-38s %12s %14s %6s" % ("way", "median s", "bytes read", "lines"))
        for name, seconds, read, lines in rows:
            print("%-38s %12.5f %14d %6d" % (name, seconds, read, lines))
        speedup = t_naive / t_ours if t_ours else float("inf")
        print("last 50 lines: ours %.0fx faster than the naive read (target >= 50x)" % speedup)
        return 0 if speedup >= 50 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
