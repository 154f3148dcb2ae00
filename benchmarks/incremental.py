# SPDX-License-Identifier: GPL-3.0-or-later
"""Incremental release vs a naive full copy, measured in one run.

Builds a 5,000-file app (text files with log-normal sizes, about 20 MB in about 400 directories) and
creates release 1. Then, for several rounds, it changes one file and times, in rotating order:
(a) ReleaseStore.create with its defaults (a file whose stat signature matches the previous scan keeps
its sha256 unread; unchanged files are hardlinked from the previous release after an lstat check),
(b) the same with full_hash=True (every file read and hashed again), on a second store, and
(c) shutil.copytree of the same source (the naive way, copy2). It prints the medians (wall time, and
the CPU time of this process, which other load on the machine disturbs less), the files hardlinked and
copied, and the extra disk. Extra disk is counted the same way for both trees: sum of st_blocks*512
over the regular files whose st_nlink == 1 in the new tree (the blocks that tree alone owns).
Directory blocks are printed apart: both trees need the same directories.

Targets: ours >= 5x faster (wall), and <= 5% extra disk of a full copy. Exit status 1 when missed.

Usage: .venv/bin/python benchmarks/incremental.py [--files 5000] [--mb 20] [--dirs 400] [--rounds 3]
       [--workdir DIR]
"""
import argparse
import os
import random
import shutil
import stat
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, ".collections"))
if not os.path.exists(os.path.join(REPO, ".collections", "ansible_collections", "devbox", "ops")):
    sys.exit("missing .collections link: run `make collection-link`")

from ansible_collections.devbox.ops.plugins.module_utils.releases import ReleaseStore  # noqa: E402

WORDS = ("const function return require module exports async await import from class self def if else "
         "for while try except raise yield lambda None True False null undefined this that app router "
         "request response status json body header config logger error value index").split()


def make_app(top, files, total_mb, dirs, seed=7):
    """Text files with log-normal sizes scaled to about ``total_mb``, spread over ``dirs`` directories."""
    rnd = random.Random(seed)
    corpus = []
    while sum(len(line) for line in corpus) < (1 << 20):
        corpus.append(" ".join(rnd.choice(WORDS) for _word in range(rnd.randint(3, 14))) + "\n")
    corpus = "".join(corpus)
    sizes = [rnd.lognormvariate(8.0, 1.1) for _file in range(files)]
    scale = total_mb * 1e6 / sum(sizes)
    sizes = [max(40, min(int(s * scale), len(corpus) - 1)) for s in sizes]
    dir_names = [""]
    while len(dir_names) < dirs:
        parent = rnd.choice(dir_names[: max(1, len(dir_names) // 2 + 1)])
        kind = rnd.choice(("lib", "src", "routes", "models", "util", "pkg"))
        name = os.path.join(parent, "%s%d" % (kind, len(dir_names)))
        dir_names.append(name)
    paths = []
    for i, size in enumerate(sizes):
        rel = os.path.join(dir_names[i % len(dir_names)], "file%04d.%s" % (i, rnd.choice(("js", "py", "json", "md"))))
        full = os.path.join(top, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        start = rnd.randint(0, len(corpus) - size)
        with open(full, "w") as f:
            f.write(corpus[start:start + size])
        paths.append(rel)
    return paths, sum(sizes)


def owned_bytes(top):
    """(file blocks owned only by this tree, all file blocks, directory blocks, files, dirs)."""
    owned = allocated = dir_blocks = n_files = n_dirs = 0
    for dirpath, _dirnames, filenames in os.walk(top):
        dir_blocks += os.lstat(dirpath).st_blocks * 512
        n_dirs += 1
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISREG(st.st_mode):
                continue
            n_files += 1
            allocated += st.st_blocks * 512
            if st.st_nlink == 1:
                owned += st.st_blocks * 512
    return owned, allocated, dir_blocks, n_files, n_dirs


def mb(n):
    return "%.2f MB" % (n / 1e6)


def timed(fn):
    """Run ``fn``; return (its result, wall seconds, CPU seconds of this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--dirs", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="parent of the scratch directory (default: system temp)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="devbox-bench-", dir=args.workdir)
    try:
        src = os.path.join(work, "src")
        paths, total = make_app(src, args.files, args.mb, args.dirs)
        store = ReleaseStore(os.path.join(work, "app"), app="bench")
        full_store = ReleaseStore(os.path.join(work, "app-full"), app="bench")
        t0 = time.perf_counter()
        store.activate(store.create(src)[0]["id"])
        print("app: %d files, %s of content, %d directories; release 1 built in %.3f s"
              % (len(paths), mb(total), args.dirs, time.perf_counter() - t0))
        full_store.activate(full_store.create(src)[0]["id"])

        rnd = random.Random(11)
        runs = {"ours": [], "full": [], "naive": []}
        builds, disk = [], {}

        def run_store(which, st, changed, **kw):
            release, wall, cpu = timed(lambda: st.create(src, **kw))
            release, created = release
            runs[which].append((wall, cpu))
            assert created and release["build"]["copied"] == 1, release["build"]
            assert release["incremental"]["modified"] == 1, release["incremental"]
            tree = os.path.join(st.releases_dir, release["id"])
            with open(os.path.join(tree, changed)) as a, open(os.path.join(src, changed)) as b:
                assert a.read() == b.read()
            st.activate(release["id"])
            if which == "ours":
                builds.append(release["build"])
                disk["ours"] = owned_bytes(tree)

        def run_naive(rnd_no):
            dst = os.path.join(work, "naive-%d" % rnd_no)
            runs["naive"].append(timed(lambda: shutil.copytree(src, dst, symlinks=True))[1:])
            disk["naive"] = owned_bytes(dst)

        for rnd_no in range(args.rounds):
            changed = rnd.choice(paths)
            with open(os.path.join(src, changed), "a") as f:
                f.write("// round %d change\n" % rnd_no)
            steps = [lambda: run_store("ours", store, changed),
                     lambda: run_store("full", full_store, changed, full_hash=True),
                     lambda: run_naive(rnd_no)]
            for step in steps[rnd_no % 3:] + steps[:rnd_no % 3]:  # each goes first once in three rounds
                step()

        med = dict((k, (statistics.median(w for w, _c in v), statistics.median(c for _w, c in v)))
                   for k, v in runs.items())
        naive_wall, naive_cpu = med["naive"]
        print("release 2 (one file changed), median of %d rounds (wall s, CPU s of this process):" % args.rounds)
        for key, label in (("ours", "ReleaseStore.create (fast path)   "), ("full", "ReleaseStore.create full_hash=True"),
                           ("naive", "shutil.copytree (full copy)      ")):
            wall, cpu = med[key]
            print("  %s %.3f s  cpu %.3f s  %5.1fx   rounds: %s" % (
                label, wall, cpu, naive_wall / wall, ", ".join("%.3f" % w for w, _c in runs[key])))
        ratio = naive_wall / med["ours"][0]
        print("  speed-up of the fast path: %.1fx wall, %.1fx CPU (target >= 5x wall)"
              % (ratio, naive_cpu / med["ours"][1]))
        last = builds[-1]
        print("  files per release: %d hardlinked, %d copied (of %d)" % (last["linked"], last["copied"], last["files"]))
        o_owned, _o_alloc, o_dirs, o_files, o_ndirs = disk["ours"]
        n_owned, _n_alloc, n_dirs, n_files, n_ndirs = disk["naive"]
        share = o_owned / n_owned
        print("extra disk (blocks of files with st_nlink == 1 in the new tree):")
        print("  ReleaseStore: %s (%d files; includes the manifest and the gzipped file index)" % (mb(o_owned), o_files))
        print("  copytree:     %s (%d files)" % (mb(n_owned), n_files))
        print("  ours / full copy: %.2f%% (target <= 5%%)" % (share * 100))
        print("  directories (not counted above, same for both): %d dirs, %s vs %d dirs, %s"
              % (o_ndirs, mb(o_dirs), n_ndirs, mb(n_dirs)))
        ok = ratio >= 5 and share <= 0.05
        print("targets met: %s" % ("yes" if ok else "NO"))
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
