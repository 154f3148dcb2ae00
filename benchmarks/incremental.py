# SPDX-License-Identifier: GPL-3.0-or-later
"""Incremental release vs a naive full copy, measured in one run.

Builds a 5,000-file app (text files with log-normal sizes, about 20 MB in about 400 directories),
creates release 1 with ReleaseStore, then, several rounds in alternating order: changes one file and
times (a) ReleaseStore.create (unchanged files hardlinked from the previous release) and (b)
shutil.copytree of the same source (the naive way). Extra disk is counted the same way for both: sum of
st_blocks*512 over the regular files whose st_nlink == 1 in the new tree (the blocks that tree alone
owns). Directory blocks are printed apart: both trees need the same directories.

Targets: ours >= 5x faster, and <= 5% extra disk of a full copy. Exit status 1 when a target is missed.

Usage: .venv/bin/python benchmarks/incremental.py [--files 5000] [--mb 20] [--dirs 400] [--rounds 3]
       [--workdir DIR]
"""
import argparse
import os
import random
import shutil
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
    for dirpath, dirnames, filenames in os.walk(top):
        dir_blocks += os.lstat(dirpath).st_blocks * 512
        n_dirs += 1
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.isfile(os.path.join(dirpath, name)) or os.path.islink(os.path.join(dirpath, name)):
                continue
            n_files += 1
            allocated += st.st_blocks * 512
            if st.st_nlink == 1:
                owned += st.st_blocks * 512
    return owned, allocated, dir_blocks, n_files, n_dirs


def mb(n):
    return "%.2f MB" % (n / 1e6)


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
        t0 = time.perf_counter()
        first = store.create(src)[0]
        store.activate(first["id"])
        print("app: %d files, %s of content, %d directories; release 1 built in %.3f s"
              % (len(paths), mb(total), args.dirs, time.perf_counter() - t0))

        rnd = random.Random(11)
        ours_t, naive_t, ours_disk, naive_disk = [], [], [], []
        for rnd_no in range(args.rounds):
            changed = rnd.choice(paths)
            with open(os.path.join(src, changed), "a") as f:
                f.write("// round %d change\n" % rnd_no)

            def run_ours():
                t = time.perf_counter()
                release, created = store.create(src)
                ours_t.append(time.perf_counter() - t)
                assert created and release["build"]["copied"] == 1, release["build"]
                assert release["incremental"]["modified"] == 1, release["incremental"]
                tree = os.path.join(store.releases_dir, release["id"])
                with open(os.path.join(tree, changed)) as a, open(os.path.join(src, changed)) as b:
                    assert a.read() == b.read()
                store.activate(release["id"])
                ours_disk.append(owned_bytes(tree))

            def run_naive():
                dst = os.path.join(work, "naive-%d" % rnd_no)
                t = time.perf_counter()
                shutil.copytree(src, dst, symlinks=True)
                naive_t.append(time.perf_counter() - t)
                naive_disk.append(owned_bytes(dst))

            for step in ((run_ours, run_naive) if rnd_no % 2 == 0 else (run_naive, run_ours)):
                step()

        ours, naive = statistics.median(ours_t), statistics.median(naive_t)
        ratio = naive / ours
        o_owned, o_alloc, o_dirs, o_files, o_ndirs = ours_disk[-1]
        n_owned, n_alloc, n_dirs, n_files, n_ndirs = naive_disk[-1]
        share = o_owned / n_owned
        print("release 2 (one file changed), median of %d rounds:" % args.rounds)
        print("  ReleaseStore.create (hardlinks): %.3f s   rounds: %s"
              % (ours, ", ".join("%.3f" % t for t in ours_t)))
        print("  shutil.copytree (full copy):     %.3f s   rounds: %s"
              % (naive, ", ".join("%.3f" % t for t in naive_t)))
        print("  speed-up: %.1fx (target >= 5x)" % ratio)
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
