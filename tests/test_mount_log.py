"""What the mount's log calls an error: the lazy-unmount test reads it for alarms."""

from __future__ import annotations

import logging
from pathlib import Path

from fusefs.datadir import LOG_FILE
from fusefs.mount import _setup_logging


def test_a_reply_the_kernel_no_longer_waits_for_is_no_error(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        _setup_logging(tmp_path, foreground=False, debug=False)
        pyfuse3_log = logging.getLogger("pyfuse3")
        pyfuse3_log.error("fuse_release(): fuse_reply_* failed with %s", "No such file or directory")
        pyfuse3_log.error("fuse_read(): fuse_reply_* failed with %s", "Input/output error")
        for handler in root.handlers:
            handler.flush()
        lines = (tmp_path / LOG_FILE).read_text().splitlines()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("pyfuse3").filters.clear()
    assert [line.split(" ", 4)[3] for line in lines] == ["INFO", "ERROR"]
