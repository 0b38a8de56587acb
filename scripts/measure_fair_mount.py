"""Through a real mount: how long uid B's listing of its (small) directory takes while uid A creates
files as fast as it can. (A listing, not a stat: the kernel answers a stat from its attribute cache.)

    sudo .venv/bin/python scripts/measure_fair_mount.py [--threads 32] [--seconds 15]

Mounts a fresh embedded store with ``-o allow_other`` twice: once with no per-uid bound to speak
of (ARTIFACT_MOUNT_UID_REQUESTS=100000, as before issue #16) and once with the default (8), and
prints uid B's stat latencies (median, 99th percentile, max) and how many files uid A made.
Needs root (it switches uids with setpriv).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "fuse"), str(REPO / "tests")]

from mounting import start_mount  # noqa: E402

ALICE, BOB = 5101, 5102

FLOOD = r"""
import os, sys, threading, time
where, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stop = time.monotonic() + seconds
made = [0] * threads
def work(t):
    i = 0
    while time.monotonic() < stop:
        with open(os.path.join(where, f"t{t}-{i}"), "wb") as f:
            f.write(b"x" * 4096)
        i += 1
    made[t] = i
ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
print(sum(made))
"""

PROBE = r"""
import json, os, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
stop, lat = time.monotonic() + seconds, []
while time.monotonic() < stop:
    t0 = time.perf_counter(); os.listdir(os.path.dirname(path)); lat.append(time.perf_counter() - t0)
    time.sleep(0.005)
print(json.dumps(lat))
"""


def as_uid(uid: int, *command: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command], stdout=subprocess.PIPE, text=True
    )


def run(per_uid: int, threads: int, seconds: float) -> None:
    public = Path(tempfile.mkdtemp(prefix="artifactfs-fair-", dir="/tmp"))
    public.chmod(0o755)
    env = {**os.environ, "ARTIFACT_MOUNT_UID_REQUESTS": str(per_uid)}
    mount = start_mount(
        public / "mnt", public / "data",
        args=["-o", "allow_other", "--map-user", f"alice={ALICE}", "--map-user", f"bob={BOB}"], env=env,
    )
    try:
        for user in ("alice", "bob"):
            (mount / f"users/{user}").mkdir()
            os.chown(mount / f"users/{user}", {"alice": ALICE, "bob": BOB}[user], -1)
        flood_dir = mount / "users/alice"
        probe = mount / "users/bob/probe"
        subprocess.run(["setpriv", f"--reuid={BOB}", f"--regid={BOB}", "--clear-groups", "touch", str(probe)],
                       check=True)
        quiet = json.loads(as_uid(BOB, sys.executable, "-c", PROBE, str(probe), "3").communicate()[0])
        flood = as_uid(ALICE, sys.executable, "-c", FLOOD, str(flood_dir), str(threads), str(seconds))
        busy = json.loads(as_uid(BOB, sys.executable, "-c", PROBE, str(probe), str(seconds)).communicate()[0])
        made = int(flood.communicate()[0])
    finally:
        mount.stop()
        shutil.rmtree(public, ignore_errors=True)

    def figures(lat: list[float]) -> str:
        lat = sorted(lat)
        return (f"median {lat[len(lat) // 2] * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms, "
                f"max {lat[-1] * 1000:.1f} ms")

    print(f"per-uid bound {per_uid}: quiet ls {figures(quiet)}; while uid A ({threads} threads) made {made} "
          f"files: ls {figures(busy)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    for per_uid in (100_000, 8):
        run(per_uid, args.threads, args.seconds)


if __name__ == "__main__":
    main()
