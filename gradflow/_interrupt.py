"""Ctrl-C for long commands: stop at once, keep what is finished, say so in one line, exit 130.

SIGTERM (`kill`, `timeout`, a batch system's time limit) ends a command the same way, its line beginning
"terminated: " and its exit status 143 (128 + 15, as shells report a process it ended).

JAX runs a whole solve as one XLA call, during which Python's signal handlers do not run; a
KeyboardInterrupt raised inside a host callback (a progress bar's) surfaces as a JaxRuntimeError, and
one raised inside a garbage-collection callback can be swallowed. So `interruptible` runs the work in a
worker thread and keeps the main thread, where CPython delivers signals, waiting: SIGINT reaches it at
once whatever the worker is doing (compiling, inside an XLA call, with or without a progress bar), and
it ends the process there with `os._exit`, which needs no cooperation from the worker.

Ending the process mid-computation loses only what was in flight: results are written atomically
(a temporary file renamed into place), so what a store holds is complete, and the command line's cleanup
removes the temporary files of writes in flight (`flows._store.discard_temporaries`). What `os._exit`
skips: `finally` blocks and atexit handlers of the process (a Dask LocalCluster's worker processes are
left to time out; a client of a remote scheduler just disconnects).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

EXIT_INTERRUPTED = 130
"""The exit status of a process ended by SIGINT, as shells report it (128 + 2)."""

HANDLED = (signal.SIGINT, signal.SIGTERM)
"""The signals that end an `interruptible` call: each exits with 128 + its number."""


_describers: list[tuple[str, Callable[[], str], Callable[[], None] | None]] = []
"""The active calls' (prefix, describe, cleanup), outermost first: SIGINT or SIGTERM reports the innermost and runs
every cleanup, innermost first."""


def interruptible(
    work: Callable[[], T],
    describe: Callable[[], str],
    *,
    prefix: str = "interrupted: ",
    cleanup: Callable[[], None] | None = None,
) -> T:
    """`work()`, ended by Ctrl-C with one line on stderr, `prefix + describe()`, and exit status 130 (by SIGTERM with
    "terminated: " + describe() and 143).

    `describe` is called in the main thread when SIGINT arrives, so it should read progress that the
    work records as it goes (counters, a stage) and say what is kept and how to go on, e.g.
    "14 of 22 runs saved; run the same command to resume". `cleanup`, if given, runs after that line, in the
    main thread, for what the work leaves that is worth nothing unfinished (an output folder it made and has
    not written to yet); it must not wait on the work. Exceptions of `work` propagate as they would without
    the thread. Calls nest: inside another call's work, `work` runs in that worker thread and a SIGINT
    meanwhile reports this call's `describe` and runs every active call's `cleanup`, innermost first. Called
    outside any, from a thread other than the main thread (where no signal handler can be installed), `work`
    simply runs there.
    """
    entry = (prefix, describe, cleanup)
    if threading.current_thread() is not threading.main_thread():
        _describers.append(entry)
        try:
            return work()
        finally:
            _describers.remove(entry)
    outcome: dict = {}
    done = threading.Event()

    def run():
        try:
            outcome["value"] = work()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, re-raised there
            outcome["error"] = err
        finally:
            done.set()

    def on_signal(signum, frame):
        prefix, describe = _describers[-1][:2]
        _end_by_signal(signum, prefix, describe, 128 + signum)

    _describers.append(entry)
    previous = {handled: signal.signal(handled, on_signal) for handled in HANDLED}
    try:
        threading.Thread(target=run, name="gradflow-work", daemon=True).start()
        # A wait with a timeout returns to the interpreter regularly, so the handler runs within 0.1 s.
        while not done.wait(0.1):
            pass
    finally:
        for handled, handler in previous.items():  # None: a handler installed outside Python, not restorable
            signal.signal(handled, signal.SIG_DFL if handler is None else handler)
        _describers.remove(entry)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def end_quietly_once_finished(status: int) -> None:
    """From now until the process exits, SIGINT or SIGTERM ends it at once with one line saying that the command had
    finished with exit `status` (what it printed and saved is complete), and that status where it is not 0 (the
    command's failure stands), 128 + the signal's number where it is.

    For the program's last moments: after its command, the interpreter's shutdown runs the libraries' exit handlers
    (JAX's among them), where Python's own KeyboardInterrupt would print a traceback from inside one of them. Only
    the main thread installs signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum, frame):
        text = f"the command had finished with exit status {status}; what it printed and saved is complete"
        _end_by_signal(signum, "interrupted: ", lambda: text, status or 128 + signum)

    for handled in HANDLED:
        signal.signal(handled, on_signal)


def _end_by_signal(signum: int, prefix: str, describe: Callable[[], str], status: int) -> None:
    """A handled signal ends the process: further signals are ignored (a second Ctrl-C while describing changes
    nothing), and the line begins with `prefix` for SIGINT, "terminated: " for SIGTERM."""
    for handled in HANDLED:
        signal.signal(handled, signal.SIG_IGN)
    _exit_interrupted(prefix if signum == signal.SIGINT else "terminated: ", describe, status)


def _exit_interrupted(prefix: str, describe: Callable[[], str], status: int = EXIT_INTERRUPTED) -> None:
    try:
        text = describe()
    except Exception as err:  # noqa: BLE001 - the line must still be printed
        text = f"(progress unknown: {type(err).__name__}: {err})"
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not keep the process alive
            pass
    # A progress bar leaves the cursor at the end of its line: start a fresh one.
    newline = "\n" if _progress_bars_open() else ""
    try:
        os.write(sys.stderr.fileno(), f"{newline}{prefix}{text}\n".encode())
    except Exception:  # noqa: BLE001
        pass
    for _, _, cleanup in reversed(_describers):
        if cleanup is not None:
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - the process must still end
                pass
    os._exit(status)


def _progress_bars_open() -> bool:
    tqdm = sys.modules.get("tqdm")
    return bool(tqdm is not None and len(getattr(tqdm.tqdm, "_instances", ())))
