#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""A stand-in for supercronic (https://github.com/aptible/supercronic) inside a simulated devbox.

Run through a symlink named ``supercronic`` (so its comm matches), as ``supercronic CRONTAB``.
What it copies from the real program:
- it reads only the crontab file it is given (the harness passes /etc/crontab), once at start and again
  on SIGUSR2; ``KEY=VALUE`` lines set the jobs' environment, ``SHELL`` picks the shell;
- job lines are 5 fields + command, with NO user field (a user name becomes part of the command),
  and the shorthands @yearly @annually @monthly @weekly @daily @midnight @hourly;
- it has no @reboot: any line it cannot parse (``@reboot`` included) is fatal, so it logs
  ``bad crontab line`` and exits 1 and no job runs at all;
- a job is not started again while its previous run is still going.
What it simplifies: the 6/7-field forms (years, seconds) and ``L W #`` are not parsed (fatal here);
job output goes straight to its stdout. And one SIMULATION SHORTCUT: a cron "minute" lasts
$HARNESS_CRON_TICK seconds (default 5) so tests need not wait minutes. The simulated clock starts at
the current wall-clock minute and advances one minute per tick; like the real program the first run
comes at the next minute boundary, i.e. one tick after start.
"""
import datetime
import os
import re
import signal
import subprocess
import sys
import time

SHORTHANDS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
              "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
              "@hourly": "0 * * * *"}
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (low, high, names, name offset) for minute, hour, day of month, month, day of week
FIELDS = [(0, 59, None, 0), (0, 23, None, 0), (1, 31, None, 0), (1, 12, MONTHS, 1), (0, 7, DAYS, 0)]
ENV_LINE = re.compile(r"^([^\s=]+)\s*=\s*(.*)$")


class BadLine(Exception):
    pass


def log(level, msg, **fields):
    extra = "".join(' %s="%s"' % kv for kv in sorted(fields.items()))
    sys.stdout.write('time="%s" level=%s msg="%s"%s\n'
                     % (datetime.datetime.now().isoformat(timespec="seconds"), level, msg, extra))
    sys.stdout.flush()


def number(text, low, high, names, offset):
    if names and text.lower() in names:
        return names.index(text.lower()) + offset
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(text)
    return int(text)


def parse_field(text, spec):
    low, high, names, offset = spec
    values = set()
    for item in text.split(","):
        rng, _sep, step = item.partition("/")
        step = int(step) if step.isdigit() and int(step) > 0 else (1 if not step else None)
        if step is None:
            raise ValueError(item)
        if rng == "*":
            first, last = low, high
        elif "-" in rng:
            first, last = (number(x, low, high, names, offset) for x in rng.split("-", 1))
        else:
            first = number(rng, low, high, names, offset)
            last = high if "/" in item else first
        if first > last:
            raise ValueError(item)
        values.update(range(first, last + 1, step))
    return values


def parse_job(line):
    parts = line.split(None, 1)
    if parts[0].startswith("@"):
        if parts[0] not in SHORTHANDS or len(parts) < 2:
            raise BadLine(line)
        schedule, command = SHORTHANDS[parts[0]].split(), parts[1]
    else:
        tokens = line.split(None, 5)
        if len(tokens) < 6:
            raise BadLine(line)
        schedule, command = tokens[:5], tokens[5]
    try:
        sets = [parse_field(text, spec) for text, spec in zip(schedule, FIELDS)]
    except ValueError:
        raise BadLine(line)
    if 7 in sets[4]:
        sets[4].add(0)
    return {"line": line, "command": command, "sets": sets,
            "dom_any": schedule[2].startswith("*"), "dow_any": schedule[4].startswith("*")}


def parse_crontab(path):
    env, jobs = {}, []
    with open(path) as f:
        for raw in f:
            line = raw.strip(" \t\n")
            if not line or line.startswith("#"):
                continue
            m = ENV_LINE.match(line)
            if m:
                value = m.group(2)
                if len(value) > 1 and value[0] in "\"'" and value[-1] == value[0]:
                    value = value[1:-1]
                env[m.group(1)] = value
                continue
            jobs.append(parse_job(line))
    return env, jobs


def due(job, t):
    minute, hour, dom, month, dow = job["sets"]
    weekday = (t.weekday() + 1) % 7  # cron: 0 = Sunday
    if job["dom_any"] or job["dow_any"]:
        day = t.day in dom and weekday in dow
    else:
        day = t.day in dom or weekday in dow  # both restricted: either one matches
    return t.minute in minute and t.hour in hour and t.month in month and day


FLAGS = {"reload": False, "stop": False}


def on_signal(signum, frame):
    FLAGS["reload" if signum == signal.SIGUSR2 else "stop"] = True


def load(path):
    log("info", "read crontab: %s" % path)
    try:
        return parse_crontab(path)
    except (OSError, BadLine) as exc:
        detail = "bad crontab line: '%s'" % exc if isinstance(exc, BadLine) else str(exc)
        log("fatal", detail)
        sys.exit(1)


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("Usage: %s CRONTAB\n" % sys.argv[0])
        return 2
    path = sys.argv[1]
    tick = float(os.environ.get("HARNESS_CRON_TICK", "5"))
    for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, on_signal)
    env, jobs = load(path)
    running = {}
    sim = datetime.datetime.now().replace(second=0, microsecond=0)
    next_tick = time.monotonic() + tick
    while not FLAGS["stop"]:
        time.sleep(max(0.0, min(0.2, next_tick - time.monotonic())))
        if FLAGS["reload"]:
            FLAGS["reload"] = False
            env, jobs = load(path)
        if time.monotonic() < next_tick:
            continue
        next_tick += tick
        sim += datetime.timedelta(minutes=1)
        for pos, proc in list(running.items()):
            if proc.poll() is not None:
                del running[pos]
        for pos, job in enumerate(jobs):
            if not due(job, sim):
                continue
            if pos in running:
                log("warning", "job is still running: skipping this run", **{"job.command": job["command"]})
                continue
            log("info", "starting", **{"job.command": job["command"], "job.position": pos})
            shell = env.get("SHELL", "/bin/sh")
            running[pos] = subprocess.Popen([shell, "-c", job["command"]], env=dict(os.environ, **env),
                                            stdin=subprocess.DEVNULL, cwd="/")
    log("info", "exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
