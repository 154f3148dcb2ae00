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
