"""gradflow._interrupt: the work's result and errors pass through; SIGINT ends the process with the innermost
description and exit 130, whatever the work is blocked in."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gradflow._interrupt import EXIT_INTERRUPTED, interruptible

ROOT = Path(__file__).resolve().parents[1]


def test_the_result_and_the_errors_of_the_work_pass_through():
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under a shell's background job
    assert interruptible(lambda: 42, lambda: "unused") == 42
    with pytest.raises(ZeroDivisionError):
        interruptible(lambda: 1 / 0, lambda: "unused")
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


# A worker blocked in one long C call (as a solve is in XLA), a counter of finished items, nested calls.
SCRIPT = textwrap.dedent(
    """
    import sys, time
    from gradflow._interrupt import interruptible

    saved = []

    def item(i):
        time.sleep(0.05 if i < 3 else 600)  # the fourth item blocks in one C call
        saved.append(i)

    def sweep():
        for i in range(10):
            interruptible(lambda: item(i), lambda: f"{len(saved)} of 10 runs saved; run the same command to resume")

    print("started", flush=True)
    interruptible(sweep, lambda: "outer")
    """
)


def test_sigint_reports_the_innermost_description_and_exits_130():
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "started\n"
    time.sleep(1.0)  # the first three items are saved, the fourth blocks
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert process.returncode == EXIT_INTERRUPTED == 130
    assert err == "interrupted: 3 of 10 runs saved; run the same command to resume\n"
