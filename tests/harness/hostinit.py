#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""PID 1 of one simulated devbox (started by tests/harness/harness, never by hand).

The harness runs this file through a symlink named ``s6-svscan`` or ``dumb-init``, so that
``/proc/1/comm`` inside the host reads like the real image. The shebang names the interpreter directly
(not ``/usr/bin/env``): with ``env`` the comm would become ``python3``.

Boot: hostname, bind mounts of the per-host disk, authorized_keys, the flavour's boot hooks, sshd.
Then it reaps zombies forever, restarts sshd if it dies, and on SIGTERM stops every process of the host.
"""
import argparse
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

USER = "devbox"
HOME = "/home/devbox"
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOOK_TIMEOUT = float(os.environ.get("HARNESS_BOOT_HOOK_TIMEOUT", "60"))
STOP_GRACE = float(os.environ.get("HARNESS_STOP_GRACE", "5"))


class Shutdown(Exception):
    pass


def log(msg):
    sys.stdout.write("%s [%s] %s\n" % (time.strftime("%H:%M:%S"), os.path.basename(sys.argv[0]), msg))
    sys.stdout.flush()


def on_term(signum, frame):
    raise Shutdown()


def set_comm(name):
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except OSError:
        pass


def clear_dir(path):
    for entry in os.listdir(path):
        full = os.path.join(path, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def bind(src, dst):
    subprocess.run(["mount", "--bind", src, dst], check=True)


def boot_env(home="/root"):
    return {"PATH": CLEAN_PATH, "HOME": home, "LANG": "C.UTF-8", "SHELL": "/bin/sh",
            "HARNESS_CRON_TICK": os.environ.get("HARNESS_CRON_TICK", "5")}


def mount_disk(hostdir):
    os.makedirs(os.path.join(hostdir, "tmp"), exist_ok=True)
    clear_dir(os.path.join(hostdir, "tmp"))  # a reboot empties /tmp, the rest of the disk survives
    os.chmod(os.path.join(hostdir, "tmp"), 0o1777)
    for src, dst in (("home", HOME), ("root", "/root"), ("usr-start", "/usr/start"),
                     ("etc/crontab", "/etc/crontab"), ("etc/hosts", "/etc/hosts"), ("tmp", "/tmp")):
        bind(os.path.join(hostdir, src), dst)


def write_authorized_keys(pubkey):
    pw = pwd.getpwnam(USER)
    sshdir = os.path.join(HOME, ".ssh")
    os.makedirs(sshdir, mode=0o700, exist_ok=True)
    os.chmod(sshdir, 0o700)
    os.chown(sshdir, pw.pw_uid, pw.pw_gid)
    path = os.path.join(sshdir, "authorized_keys")
    with open(path, "w") as f:
        f.write(pubkey)
    os.chmod(path, 0o600)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    project = os.path.join(HOME, "project")
    os.makedirs(project, exist_ok=True)
    os.chown(project, pw.pw_uid, pw.pw_gid)


def run_start_scripts():
    """s6 flavour: every executable file in /usr/start, in name order, as root (like Sealos)."""
    for name in sorted(os.listdir("/usr/start")):
        path = os.path.join("/usr/start", name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        log("boot hook %s" % path)
        proc = subprocess.Popen([path], cwd="/", env=boot_env(), stdin=subprocess.DEVNULL)
        try:
            log("boot hook %s exited %d" % (path, proc.wait(timeout=HOOK_TIMEOUT)))
        except subprocess.TimeoutExpired:
            log("boot hook %s still running after %ss; boot goes on" % (path, HOOK_TIMEOUT))


def start(argv, env):
    return subprocess.Popen(argv, cwd="/", env=env, stdin=subprocess.DEVNULL).pid


def shutdown():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log("stopping: SIGTERM to every process of the host")
    try:
        os.kill(-1, signal.SIGTERM)  # from PID 1 of a pid namespace: every other process in it
    except ProcessLookupError:
        pass
    deadline = time.time() + STOP_GRACE
    while time.time() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.1)
        except ChildProcessError:
            break
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--flavour", required=True, choices=["s6", "cron", "dumb-init"])
    args = ap.parse_args()
    if os.getpid() != 1:
        sys.exit("hostinit must run as PID 1 of a new pid namespace (started by the harness)")
    set_comm(os.path.basename(sys.argv[0]))
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    hostdir = os.path.join(args.state, "hosts", args.host)
    try:
        log("boot %s (flavour %s)" % (args.host, args.flavour))
        socket.sethostname(args.host)
        mount_disk(hostdir)
        with open(os.path.join(args.state, "id_ed25519.pub")) as f:
            write_authorized_keys(f.read())
        if args.flavour == "s6":
            run_start_scripts()
        elif args.flavour == "cron":
            start([os.path.join(args.state, "bin", "supercronic"), "/etc/crontab"], boot_env())
        sshd_argv = ["/usr/sbin/sshd", "-D", "-e", "-f", os.path.join(hostdir, "sshd_config")]
        sshd = start(sshd_argv, boot_env())
        log("sshd started (pid %d)" % sshd)
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(1)
                continue
            if pid == sshd:
                log("sshd exited (status %d); restarting in 1s" % status)
                time.sleep(1)
                sshd = start(sshd_argv, boot_env())
    except Shutdown:
        shutdown()
        log("stopped")
        return 0


if __name__ == "__main__":
    sys.exit(main())
