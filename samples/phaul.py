#!/usr/bin/python3
"""P.Haul's live-migration loop over CRIU's RPC, driving criu-sharp through pycriu.

P.Haul (checkpoint-restore/p.haul) talks to `criu swrk` with pycriu's messages: one swrk
connection carries the whole pre-dump loop (PRE_DUMP, PRE_DUMP, ..., then DUMP on the same
socket, as criu/cr-service.c allows), the dump reports back through NOTIFY round trips
(pre-dump, post-dump), and the destination restores with its own connection. Here the two hosts
are two criu-sharp machine directories, chosen through CRIU_SHARP_MACHINE in the environment
pycriu passes to the service it starts.

    /usr/bin/python3 samples/phaul.py WORKLOAD.json WORKDIR [CRIU_SHARP]

WORKDIR receives source/ and dest/ (the machines) and img/1, img/2, ... (the image sets).
CRIU_SHARP is the criu-sharp executable (default: the Release build under artifacts/).
Debian's python3-pycriu (package criu) must be importable: run it with /usr/bin/python3.
Exit status 0 when the restored workload verifies on the destination.

The stop rules are P.Haul's (phaul/iters.py), checked after every pre-dump in this order:
pages written <= 64; growth over the previous pre-dump, (cur - prev) * 100 / prev in integer
percent, > 10; iteration index (from 0) >= 8. The workload keeps running on the source while an
image set crosses the link: `criu-sharp run` advances the source by the time the set's bytes take
at BANDWIDTH (128 MiB/s).
"""

import os
import socket
import subprocess
import sys

import pycriu
from pycriu import rpc_pb2 as rpc

MIN_ITER_PAGES_COUNT = 64
MAX_ITER_GROW_RATE = 10
MAX_ITERS_COUNT = 8
BANDWIDTH = 128 << 20


class Swrk:
    """One `criu-sharp swrk` connection, started the way pycriu starts CRIU, kept open for a loop."""

    def __init__(self, binary, machine):
        os.environ["CRIU_SHARP_MACHINE"] = machine
        # pycriu's own launcher: socketpair, fork, close 0-2, send the pid, exec `BINARY swrk FD`.
        self._comm = sys.modules["pycriu.criu"]._criu_comm_bin(binary)
        self._sk = self._comm.connect(False)

    def request(self, req, on_notify=None):
        """Sends one criu_req and answers NOTIFY messages until the final criu_resp arrives."""
        self._sk.send(req.SerializeToString())
        while True:
            size = len(self._sk.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))
            if size == 0:
                raise pycriu.CRIUExceptionInternal(req.type, "the service closed the connection")
            resp = rpc.criu_resp()
            resp.ParseFromString(self._sk.recv(size))
            if resp.type != rpc.NOTIFY:
                if not resp.success:
                    print("criu-sharp: %s: %s" % (rpc.criu_req_type.Name(req.type), resp.cr_errmsg), file=sys.stderr)
                    raise pycriu.CRIUExceptionExternal(req.type, resp.type, resp.cr_errno)
                return resp
            ok = on_notify(resp.notify.script, resp.notify.pid) if on_notify else True
            ack = rpc.criu_req()
            ack.type = rpc.NOTIFY
            ack.notify_success = ok
            self._sk.send(ack.SerializeToString())

    def close(self):
        self._comm.disconnect()


def images_dir_opts(path, log, pid=None, parent=None):
    opts = rpc.criu_opts()
    opts.images_dir_fd = os.open(path, os.O_DIRECTORY)
    if pid is not None:
        opts.pid = pid
    if parent is not None:
        opts.parent_img = parent
    opts.log_file = log
    return opts


def dump_stats(path):
    with open(os.path.join(path, "stats-dump"), "rb") as f:
        return pycriu.images.load(f)["entries"][0]["dump"]


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
               if not os.path.islink(os.path.join(path, n)))


def cli(binary, *args):
    return subprocess.run([binary, *args], check=True, capture_output=True, text=True).stdout


def uptime_ns(binary, machine):
    import json
    return json.loads(cli(binary, "run", "--for", "0ns", "--machine", machine, "--json"))["uptime_ns"]


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    workload, work = sys.argv[1], os.path.abspath(sys.argv[2])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = sys.argv[3] if len(sys.argv) > 3 else os.path.join(root, "artifacts/bin/Cli/release/criu-sharp")
    src, dst, img = os.path.join(work, "source"), os.path.join(work, "dest"), os.path.join(work, "img")
    os.makedirs(img, exist_ok=True)

    pid = int(cli(binary, "spawn", workload, "--machine", src).split()[0])
    cli(binary, "run", "--for", os.environ.get("WARMUP", "200ms"), "--machine", src)
    print("source: spawned %d from %s" % (pid, workload))

    source = Swrk(binary, src)
    criu_check = rpc.criu_req()
    criu_check.type = rpc.FEATURE_CHECK
    criu_check.features.mem_track = True
    criu_check.keep_open = True
    if not source.request(criu_check).features.mem_track:
        print("the source kernel cannot track memory changes: no pre-dumps")
        return 1

    # The pre-dump loop: every request on the same connection, each set's parent the previous one.
    i, prev = 1, None
    while True:
        d = os.path.join(img, str(i))
        os.makedirs(d)
        req = rpc.criu_req()
        req.type = rpc.PRE_DUMP
        req.opts.MergeFrom(images_dir_opts(d, "pre-dump.log", pid, "../%d" % (i - 1) if i > 1 else None))
        req.opts.track_mem = True
        source.request(req)
        os.close(req.opts.images_dir_fd)
        st = dump_stats(d)
        written, sent = st["pages_written"], dir_bytes(d)
        print("pre-dump %d: %d pages written, %d in parent, %d bytes to send"
              % (i, written, st["pages_skipped_parent"], sent))
        cli(binary, "run", "--for", "%dns" % (sent * 10**9 // BANDWIDTH), "--machine", src)

        index = i - 1
        if written <= MIN_ITER_PAGES_COUNT:
            print("stop: small dump (%d <= %d pages)" % (written, MIN_ITER_PAGES_COUNT))
            break
        if prev is not None:
            grow = (written - prev) * 100 // prev
            if grow > MAX_ITER_GROW_RATE:
                print("stop: iteration grows (%d%% > %d%%)" % (grow, MAX_ITER_GROW_RATE))
                break
        if index >= MAX_ITERS_COUNT:
            print("stop: too many iterations (index %d >= %d)" % (index, MAX_ITERS_COUNT))
            break
        prev = written
        i += 1

    # The final dump ends the loop on the same connection; post-dump is where P.Haul syncs the
    # last images to the destination before the source tree is killed.
    final = i + 1
    d = os.path.join(img, str(final))
    os.makedirs(d)
    req = rpc.criu_req()
    req.type = rpc.DUMP
    req.opts.MergeFrom(images_dir_opts(d, "dump.log", pid, "../%d" % i))
    req.opts.track_mem = True
    req.opts.notify_scripts = True
    seen = []
    source.request(req, lambda script, _pid: seen.append(script) or True)
    source.close()
    st = dump_stats(d)
    print("dump %d: %d pages written, %d in parent, frozen %d us (notified: %s)"
          % (final, st["pages_written"], st["pages_skipped_parent"], st["frozen_time"], ", ".join(seen)))
    src_uptime = uptime_ns(binary, src)

    dest = Swrk(binary, dst)
    req = rpc.criu_req()
    req.type = rpc.RESTORE
    req.opts.MergeFrom(images_dir_opts(d, "restore.log"))
    req.opts.notify_scripts = True
    restored = []
    resp = dest.request(req, lambda script, p: restored.append((script, p)) or True)
    dest.close()
    print("destination: restored %d (notified: %s)" % (resp.restore.pid, ", ".join(s for s, _ in restored)))

    # The workload's schedule is absolute virtual time: the destination's clock catches up with the
    # source's, then the restored workload runs on for 100 ms and checks itself again.
    ok = subprocess.run([binary, "verify", "--machine", dst]).returncode == 0
    catch_up = max(0, src_uptime - uptime_ns(binary, dst))
    cli(binary, "run", "--for", "%dns" % (catch_up + 100 * 10**6), "--machine", dst)
    ok = subprocess.run([binary, "verify", "--machine", dst]).returncode == 0 and ok
    print("migrated: %d pre-dumps + final dump over RPC; images in %s" % (final - 1, img))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
