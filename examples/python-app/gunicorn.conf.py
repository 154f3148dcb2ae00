# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""gunicorn settings for the py-app example: `gunicorn -c gunicorn.conf.py app:application`.

On SIGTERM gunicorn stops accepting, lets workers finish their request (up to graceful_timeout) and exits
0. SIGINT and SIGQUIT (PM2 sends SIGINT) are a quick shutdown that does not wait for requests: zero
downtime for this app comes from blue-green behind nginx, not from the signal.
"""
import os

bind = "%s:%s" % (os.environ.get("HOST", "0.0.0.0"), os.environ.get("PORT", "8000"))
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
graceful_timeout = 10
keepalive = 2
accesslog = None  # no access log: request lines are not needed by devbox.ops and stay out of PM2 logs
