# SPDX-License-Identifier: GPL-3.0-or-later
"""The logs engine on real files: tails checked against a naive full read, rotated plain and .gz files
(logrotate and pm2-logrotate names), a 1 GiB sparse file read from its end, each filter, bad input and
secret redaction."""
import datetime
import gzip
import json
import os

import pytest

from ansible_collections.devbox.ops.plugins.module_utils import logs
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.events import MASK

UTC = datetime.timezone.utc
NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def write(path, lines, mtime=None, gz=False):
    data = "".join(line + "\n" for line in lines).encode()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as handle:
        handle.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return str(path)


def texts(result):
    return [e["line"] for e in result["lines"]]


def flt(**kw):
    kw.setdefault("now", NOW)
    return logs.LogFilter(**kw)


# ------------------------------------------------------------------ tail


@pytest.mark.parametrize("count", [1, 7, 999, 1000, 5000])
def test_tail_matches_a_naive_read_across_block_boundaries(tmp_path, count):
    # lines of varied length so that block edges fall inside lines
    lines = ["line %05d %s" % (i, "x" * (i * 37 % 300)) for i in range(3000)]
    path = write(tmp_path / "app.log", lines)
    with open(path) as handle:
        naive = handle.read().splitlines()[-count:]
    assert texts(logs.tail(path, flt(lines=count))) == naive


def test_last_line_without_newline_and_blank_lines(tmp_path):
    path = tmp_path / "app.log"
    path.write_bytes(b"one\r\n\n\ntwo\nthree")
    assert texts(logs.tail(str(path), flt(lines=2))) == ["two", "three"]
    assert texts(logs.tail(str(path), flt(lines=10))) == ["one", "two", "three"]


def test_a_1gib_file_is_read_from_its_end_only(tmp_path):
    path = tmp_path / "big.log"
    with open(path, "wb") as handle:
        handle.truncate(1024 ** 3)  # sparse: 1 GiB of NUL bytes without a newline, then real lines
        handle.seek(0, os.SEEK_END)
        handle.write(b"".join(b"INFO request %d\n" % i for i in range(100)))
    result = logs.tail(str(path), flt(lines=10))
    assert texts(result) == ["INFO request %d" % i for i in range(90, 100)]
    assert result["scanned_bytes"] <= logs.BLOCK and not result["truncated"]
    # a filter that never matches stops at max_bytes instead of reading the whole GiB
    result = logs.tail(str(path), flt(lines=10, level="error", max_bytes=4 * 1024 * 1024))
    assert result["lines"] == [] and result["truncated"] is True
    assert result["scanned_bytes"] <= 4 * 1024 * 1024 + logs.BLOCK


def test_rotated_plain_and_gz_files_fill_the_tail_in_order(tmp_path):
    write(tmp_path / "app.log.2.gz", ["old %d" % i for i in range(5)], mtime=1000, gz=True)
    write(tmp_path / "app.log.1", ["mid %d" % i for i in range(3)], mtime=2000)
    live = write(tmp_path / "app.log", ["new 0", "new 1"])
    write(tmp_path / "app.log.bak", ["not a rotation"], mtime=3000)
    write(tmp_path / "other.log.1", ["someone else"], mtime=3000)
    assert logs.rotated_files(live) == [str(tmp_path / "app.log.1"), str(tmp_path / "app.log.2.gz")]
    result = logs.tail(live, flt(lines=8))
    assert texts(result) == ["old 2", "old 3", "old 4", "mid 0", "mid 1", "mid 2", "new 0", "new 1"]
    assert [e["file"] for e in result["lines"]][0] == str(tmp_path / "app.log.2.gz")
    assert result["files"] == [live, str(tmp_path / "app.log.1"), str(tmp_path / "app.log.2.gz")]
    assert texts(logs.tail(live, flt(lines=2))) == ["new 0", "new 1"]
    assert logs.tail(live, flt(lines=2))["files"] == [live]  # rotated files opened only when needed
    assert texts(logs.tail(live, flt(lines=8), rotated=False)) == ["new 0", "new 1"]


def test_pm2_logrotate_and_dateext_names(tmp_path):
    write(tmp_path / "api-out__2024-05-01_00-00-00.log.gz", ["may 1"], mtime=1000, gz=True)
    write(tmp_path / "api-out__2024-05-02_00-00-00.log", ["may 2"], mtime=2000)
    live = write(tmp_path / "api-out.log", ["now"])
    assert texts(logs.tail(live, flt(lines=5))) == ["may 1", "may 2", "now"]
    write(tmp_path / "web.log-20240501.gz", ["d1"], mtime=1000, gz=True)
    write(tmp_path / "web.log-20240502", ["d2"], mtime=1000)  # same mtime: the name decides
    web = write(tmp_path / "web.log", ["d3"])
    assert texts(logs.tail(web, flt(lines=5))) == ["d1", "d2", "d3"]


def test_missing_file_and_damaged_gz(tmp_path):
    with pytest.raises(DevboxOpsError) as err:
        logs.tail(str(tmp_path / "nope.log"), flt())
    assert err.value.param == "path" and "nope.log" in str(err.value)
    (tmp_path / "nope.log.1.gz").write_bytes(b"\x1f\x8b not gzip")
    write(tmp_path / "nope.log.2", ["older"], mtime=1)
    result = logs.tail(str(tmp_path / "nope.log"), flt(), missing_ok=True)
    assert texts(result) == ["older"]


# ------------------------------------------------------------------ level


def test_level_detection():
    cases = {
        '{"level":50,"time":1714564800000,"msg":"pino error"}': "error",
        '{"level":40,"msg":"pino warn"}': "warn",
        '{"level":30,"msg":"pino info"}': "info",
        '{"level":"WARNING","timestamp":"2024-05-01T12:00:00Z"}': "warn",
        '{"severity":"fatal"}': "error",
        "ERROR something broke": "error",
        "[error] nginx style": "error",
        "WARN low disk": "warn",
        "Error: connect ECONNREFUSED 127.0.0.1:27017": "error",
        "2024-05-01T12:00:00: [warn] with pm2 --time prefix": "warn",
        "[2024-05-01 12:00:00 +0000] [42] [ERROR] Worker timeout": "error",
        "2024-05-01 12:00:00,123 - app.db - WARNING - slow query": "warn",
        'ts=2024-05-01T12:00:00Z level=debug msg="logfmt"': "debug",
        "information only": None,
        "Debugger listening on ws://": None,
        "plain text": None,
    }
    for line, level in cases.items():
        assert logs.parse_line(line)[1] == level, line


def test_time_detection():
    assert logs.parse_line('{"level":30,"time":1714564800000}')[0] == NOW
    assert logs.parse_line('{"timestamp":"2024-05-01T12:00:00.5Z"}')[0] == NOW + datetime.timedelta(seconds=0.5)
    assert logs.parse_line("2024-05-01T14:00:00+02:00 hello")[0] == NOW
    assert logs.parse_line("[2024-05-01 12:00:00 +0000] [42] [INFO] Booting")[0] == NOW
    assert logs.parse_line("2024-05-01 12:00:00,250 - x - INFO - y")[0] == \
        datetime.datetime(2024, 5, 1, 12, 0, 0, 250000).astimezone(UTC)  # no offset: local time
    assert logs.parse_line("no time here")[0] is None


def test_level_filter_keeps_this_level_and_worse_and_uses_the_stream_default(tmp_path):
    path = write(tmp_path / "app.log", ["DEBUG d", "INFO i", "WARN w", "ERROR e", "unmarked", '{"level":60}'])
    assert texts(logs.tail(path, flt(level="warn"))) == ["WARN w", "ERROR e", '{"level":60}']
    assert texts(logs.tail(path, flt(level="error"))) == ["ERROR e", '{"level":60}']
    assert texts(logs.tail(path, flt(level="error"), default_level="error")) == ["ERROR e", "unmarked", '{"level":60}']
    assert [e["level"] for e in logs.tail(path, flt(level="debug"))["lines"]] == \
        ["debug", "info", "warn", "error", "error"]  # unmarked lines have no level and no level filter keeps them


def test_stack_trace_lines_follow_their_first_line(tmp_path):
    path = write(tmp_path / "err.log", [
        "2024-05-01T11:00:00: INFO started",
        "2024-05-01T11:30:00: ERROR TypeError: x is undefined",
        "    at handler (/app/server.js:10:5)",
        "    at Layer.handle (/app/node_modules/express/lib/router/layer.js:95:5)",
        "2024-05-01T11:31:00: INFO recovered",
    ])
    result = logs.tail(path, flt(level="error"))
    assert texts(result) == ["2024-05-01T11:30:00: ERROR TypeError: x is undefined",
                             "    at handler (/app/server.js:10:5)",
                             "    at Layer.handle (/app/node_modules/express/lib/router/layer.js:95:5)"]
    assert len(set(e["time"] for e in result["lines"])) == 1
    assert texts(logs.tail(path, flt(regex=r"server\.js"))) == ["    at handler (/app/server.js:10:5)"]


# ------------------------------------------------------------------ time


def test_since_until_iso_and_relative(tmp_path):
    stamps = [NOW - datetime.timedelta(minutes=m) for m in (180, 90, 30, 10, 1)]
    lines = ["%s: event %d" % (s.strftime("%Y-%m-%dT%H:%M:%S+00:00"), i) for i, s in enumerate(stamps)]
    path = write(tmp_path / "app.log", lines)
    assert texts(logs.tail(path, flt(since="15m"))) == lines[3:]
    assert texts(logs.tail(path, flt(since="2h", until="20m"))) == lines[1:3]
    assert texts(logs.tail(path, flt(since="2024-05-01T11:00:00Z", until="2024-05-01T11:55:00Z"))) == lines[2:4]
    assert texts(logs.tail(path, flt(until=NOW.timestamp() - 3600))) == lines[:2]
    assert texts(logs.tail(path, flt(since="1d", lines=2))) == lines[3:]


def test_since_stops_reading_at_the_first_older_line(tmp_path):
    old = ["2024-04-01T00:00:00Z INFO old %d %s" % (i, "y" * 200) for i in range(20000)]
    write(tmp_path / "app.log.1", old, mtime=1)
    path = write(tmp_path / "app.log", old[:10000] + ["2024-05-01T11:59:00Z INFO recent"])
    result = logs.tail(path, flt(since="10m"))
    assert texts(result) == ["2024-05-01T11:59:00Z INFO recent"]
    assert result["scanned_bytes"] <= logs.BLOCK and result["files"] == [path]


def test_untimed_lines_are_counted_when_filtering_by_time(tmp_path):
    path = write(tmp_path / "app.log", ["no time 1", "2024-05-01T11:59:00Z hi", "no time 2"])
    result = logs.tail(path, flt(since="1h"))
    assert texts(result) == ["2024-05-01T11:59:00Z hi"] and result["untimed"] == 2


# ------------------------------------------------------------------ regex and bad input


def test_regex_filter(tmp_path):
    path = write(tmp_path / "app.log", ["GET /api/users 200", "GET /api/orders 500", "POST /api/users 201"])
    assert texts(logs.tail(path, flt(regex=r"^GET .* [45]\d\d$"))) == ["GET /api/orders 500"]
    assert texts(logs.tail(path, flt(regex="(?i)post"))) == ["POST /api/users 201"]
    assert texts(logs.tail(path, flt(regex="users", lines=1))) == ["POST /api/users 201"]


@pytest.mark.parametrize("kwargs, param, fragment", [
    ({"regex": "(unclosed"}, "regex", "not a valid regular expression"),
    ({"regex": "x" * 600}, "regex", "longer than 512"),
    ({"regex": "(a+)+$"}, "regex", "exponential"),
    ({"regex": r"(\w|\d*)*x"}, "regex", "exponential"),
    ({"lines": 0}, "lines", "1 to 100000"),
    ({"lines": "ten"}, "lines", "whole number"),
    ({"level": "loud"}, "level", "debug, info, warn, error"),
    ({"since": "yesterday"}, "since", "15m"),
    ({"until": "5 parsecs"}, "until", "ISO 8601"),
    ({"since": "1h", "until": "2h"}, "until", "before since"),
    ({"max_bytes": 10}, "max_bytes", ">="),
])
def test_bad_input_names_the_parameter_and_value(kwargs, param, fragment):
    with pytest.raises(DevboxOpsError) as err:
        flt(**kwargs)
    assert err.value.param == param and param in str(err.value) and fragment in str(err.value)
    value = list(kwargs.values())[-1]
    assert (repr(value)[:30] if isinstance(value, str) else str(value)) in str(err.value)


# ------------------------------------------------------------------ secrets


def test_secrets_are_masked_and_cannot_be_probed_by_regex(tmp_path):
    secret_lines = [
        "connecting to mongodb://app:pw-1-secret@db:27017/x",
        "login password=pw-2-secret user=bob",
        '{"level":30,"token":"tok-3-secret","msg":"ok"}',
        "Authorization: Bearer tok4secretsecret",
        "GET /cb?access_token=tok-5-secret&page=2",
        "env says API_KEY is canary-6-secret",
    ]
    path = write(tmp_path / "app.log", secret_lines)
    result = logs.tail(path, flt(secrets=["canary-6-secret"]))
    assert "secret" not in json.dumps(texts(result))  # none of the secret values survive
    assert texts(result) == [
        "connecting to mongodb://app:%s@db:27017/x" % MASK,
        "login password=%s user=bob" % MASK,
        '{"level":30,"token":"%s","msg":"ok"}' % MASK,
        "Authorization: Bearer %s" % MASK,
        "GET /cb?access_token=%s&page=2" % MASK,
        "env says API_KEY is %s" % MASK,
    ]
    assert logs.tail(path, flt(regex="pw-2"))["lines"] == []
    assert logs.tail(path, flt(regex="canary-6", secrets=["canary-6-secret"]))["lines"] == []
