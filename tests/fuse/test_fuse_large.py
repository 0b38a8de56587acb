"""Several large streams through one mount at once: memory grows by a few MiB per open file, no more.

``test_fuse_streaming`` takes one 4 GiB file through; this one takes four
files at once, written and then read back concurrently, and samples the
mount's resident memory all along (psutil, plus the kernel's high-water mark
``VmHWM``). The data is pseudo-random (AES-CTR from openssl), so a block at a
wrong offset cannot pass for the right one.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from mounting import Mount

MiB = 1 << 20
STREAMS = 4
SIZE = 384 * MiB
PER_STREAM_BUDGET = 16 * MiB  # chunks fetched ahead and waiting to be hashed, plus buffers in flight
SLACK = 8 * MiB  # threads, interpreter, allocator


def vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


class PeakMemory:
    """The highest resident size of a process, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    @contextmanager
    def watching(self) -> Iterator[PeakMemory]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def pseudo_random(seed: int, size: int) -> str:
    """A shell pipeline writing ``size`` pseudo-random bytes to stdout."""
    return (
        f"openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f -iv {seed:032x} -nosalt -in /dev/zero"
        f" 2>/dev/null | head -c {size}"
    )


@pytest.mark.slow
def test_concurrent_large_streams_in_bounded_memory(mount: Mount, alice: Path) -> None:
    digests = {}
    for i in range(STREAMS):  # what each file must hold
        done = subprocess.run(f"{pseudo_random(i, SIZE)} | sha256sum", shell=True, capture_output=True, text=True,
                              check=True)
        digests[f"f{i}.bin"] = done.stdout.split()[0]
    with PeakMemory(mount.process.pid).watching() as memory:
        writers = [
            subprocess.Popen(f"{pseudo_random(i, SIZE)} | dd of={alice / f'f{i}.bin'} bs=1M iflag=fullblock status=none",
                             shell=True)
            for i in range(STREAMS)
        ]
        assert [w.wait() for w in writers] == [0] * STREAMS
        subprocess.run("sync; echo 1 > /proc/sys/vm/drop_caches", shell=True, check=True)  # reads reach the store
        readers = [
            subprocess.Popen(["sha256sum", str(alice / name)], stdout=subprocess.PIPE, text=True) for name in digests
        ]
        read = {name: r.communicate()[0].split()[0] for name, r in zip(digests, readers, strict=True)}
    assert read == digests
    for name, digest in digests.items():
        assert (alice / name).stat().st_size == SIZE
        assert os.getxattr(alice / name, "user.artifact.sha256").decode() == digest
    budget = STREAMS * PER_STREAM_BUDGET + SLACK
    peak = max(memory.peak, vm_hwm(mount.process.pid))
    assert peak - memory.baseline < budget, (
        f"the mount grew by {(peak - memory.baseline) / MiB:.0f} MiB for {STREAMS} streams"
        f" (budget {budget / MiB:.0f} MiB)"
    )
