"""Rank 0's I/O in its own process: the compute process keeps the GIL to itself.

``RunnerIO`` (``gpu_runner.io``) is pure-Python network work: pulls, heartbeats, status writes,
events, S3 requests, the MP4 encode of the previous segment. As a thread of the compute process
it shares one GIL with the thread that dispatches the model's kernels, and every wake-up of the
I/O loop during a render comes out of the render (a tiny-wan burst rendered 26 % slower than the
same calls in a process of their own, ``bench/vs_redis.py``). vLLM and SGLang split their engine
core from the API server for the same reason. ``IOProcess`` is the same interface as ``RunnerIO``
with the ``RunnerIO`` living in a spawned child:

- calls go over one ``multiprocessing`` pipe (request, and a reply for those that return
  something); progress, ``begin_render`` and ``submit_result`` do not wait for one; a segment
  comes with its inputs (fetched by the child before it answers: one round trip, not two);
- a finished segment's frames go through POSIX shared memory (one copy, no pickling of the
  frames, no pipe transfer on the compute thread); the child encodes and stores them as before;
- a cancel observed by the child's KV watch is a byte in shared memory that the step callback
  reads without a round trip; so is "bus connected" for the health check;
- the child dies with its parent (``PR_SET_PDEATHSIG``: a rank killed by SIGKILL leaves no I/O
  process holding its messages); it ignores SIGINT/SIGTERM (the parent's ``close`` drains it:
  uploads in flight finish first), and if the parent exits without ``close`` it drains itself;
- a child that dies makes the next call raise ``IOProcessGone``: the runner ends and is restarted,
  its held segments are redelivered after their ack wait.

``Settings.runner_io`` picks ``process`` (the default) or ``thread`` (``RunnerIO`` in-process).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from gpu_runner.inputs import SegmentInputs
from runtime.logging import configure_logging, get_logger
from runtime.settings import Settings
from schemas.errors import Retryable
from schemas.messages import SegmentJob

log = get_logger(component="runner-io-process")

SLOTS = 256  # cancel flags, indexed by handle id modulo SLOTS (one segment renders at a time)
CONNECTED = SLOTS  # the flag after the cancel slots: the child's bus connection is up
READY_TIMEOUT_S = 120.0
CALL_MARGIN_S = 60.0  # a reply later than the child's own timeout plus this: the child is stuck
INPUTS_TIMEOUT_S = 300.0  # RunnerIO.fetch_inputs' own limit


class IOProcessGone(RuntimeError):
    """The I/O process exited or stopped answering: the runner must restart."""


@dataclass
class RemoteActive:
    """The compute side's handle on a segment the I/O process holds (``gpu_runner.io.Active``), with
    its inputs, fetched by the I/O process before it handed the segment over (or why they could not be)."""

    id: int
    job: SegmentJob
    stored_at: datetime | None
    _flags: Any
    inputs: SegmentInputs | None = None
    inputs_error: BaseException | None = None

    @property
    def cancelled(self) -> bool:
        return bool(self._flags[self.id % SLOTS])


class IOProcess:
    """``RunnerIO``'s interface, served by a child process (see the module docstring)."""

    def __init__(self, settings: Settings, model: str, *, runner_id: str | None = None,
                 progress_interval_s: float = 0.25) -> None:
        self.settings = settings
        self.model = model
        # the runner is rank 0 (this process), not its I/O child: events and presence name this pid
        self.runner_id = runner_id or f"{socket.gethostname()}-{os.getpid()}"
        self.progress_interval_s = progress_interval_s
        self._ctx = mp.get_context("spawn")  # no fork of a process that holds CUDA/torch threads
        self._flags: Any = self._ctx.RawArray("b", SLOTS + 1)
        self._conn: Connection | None = None
        self._proc: Any = None
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        ours, theirs = self._ctx.Pipe(duplex=True)
        self._proc = self._ctx.Process(
            target=serve, name="videogen-runner-io", daemon=True,
            args=(theirs, self.settings, self.model, self.runner_id, self.progress_interval_s, self._flags))
        self._proc.start()
        theirs.close()
        self._conn = ours
        self._wait_reply("start", READY_TIMEOUT_S)
        log.info("runner_io_process_started", pid=self._proc.pid)

    def close(self, timeout_s: float = 120.0) -> None:
        """Let the child finish its uploads (up to ``timeout_s``), then stop it."""
        if self._proc is None:
            return
        try:
            self._call("close", timeout_s, timeout=timeout_s + CALL_MARGIN_S)
        except (IOProcessGone, OSError) as e:
            log.warning("runner_io_process_close_failed", error=str(e))
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)

    # ---- the RunnerIO interface -------------------------------------------------------------
    def next_segment(self, timeout_s: float = 1.0) -> RemoteActive | None:
        """The next segment and its inputs in one round trip (the child fetches them before it answers)."""
        got = self._call("next_segment", timeout_s, timeout=timeout_s + INPUTS_TIMEOUT_S + CALL_MARGIN_S)
        if got is None:
            return None
        handle, job, stored_at, inputs, error = got
        return RemoteActive(handle, job, stored_at, self._flags, inputs, error)

    def fetch_inputs(self, active: RemoteActive) -> SegmentInputs:
        """The inputs that came with the segment; raises what fetching them raised."""
        if active.inputs_error is not None:
            raise active.inputs_error
        assert active.inputs is not None  # the child sends one or the other
        return active.inputs

    def begin_render(self, active: RemoteActive) -> None:
        self._send("begin_render", active.id)

    def progress(self, active: RemoteActive, step: int, steps: int) -> None:
        self._send("progress", active.id, step, steps)

    def submit_result(self, active: RemoteActive, frames: np.ndarray, elapsed_s: float) -> None:
        """Frames into shared memory (the child copies them out and unlinks it), then return."""
        frames = np.ascontiguousarray(frames)
        shm = shared_memory.SharedMemory(create=True, size=max(1, int(frames.nbytes)))
        try:
            np.ndarray(frames.shape, frames.dtype, buffer=shm.buf)[...] = frames
            name = shm.name
        finally:
            shm.close()
        self._send("submit_result", active.id, name, tuple(frames.shape), frames.dtype.str, elapsed_s)

    def fail(self, active: RemoteActive, err: BaseException) -> None:
        self._call("fail", active.id, _portable(err), timeout=60 + CALL_MARGIN_S)

    def abandon(self, active: RemoteActive) -> None:
        self._call("abandon", active.id, timeout=60 + CALL_MARGIN_S)

    def hand_back(self, active: RemoteActive, delay_s: float = 0.0) -> None:
        self._call("hand_back", active.id, delay_s, timeout=30 + CALL_MARGIN_S)

    def replan(self, active: RemoteActive, max_window_frames: int, reason: str) -> None:
        self._call("replan", active.id, max_window_frames, reason, timeout=60 + CALL_MARGIN_S)

    def fetch_lora(self, uri: str) -> bytes:
        data: bytes = self._call("fetch_lora", uri, timeout=600 + CALL_MARGIN_S)
        return data

    def connected(self) -> bool:
        return bool(self._flags[CONNECTED]) and self._proc is not None and self._proc.is_alive()

    def pending_uploads(self) -> int:
        n: int = self._call("pending_uploads", timeout=CALL_MARGIN_S)
        return n

    # ---- the pipe ---------------------------------------------------------------------------
    def _send(self, op: str, *args: Any) -> None:
        with self._lock:
            try:
                self._live_conn().send((op, args, False))
            except (OSError, EOFError) as e:
                raise self._gone(op, e) from e

    def _call(self, op: str, *args: Any, timeout: float) -> Any:
        with self._lock:
            try:
                self._live_conn().send((op, args, True))
            except (OSError, EOFError) as e:
                raise self._gone(op, e) from e
            return self._wait_reply(op, timeout)

    def _wait_reply(self, op: str, timeout: float) -> Any:
        conn = self._live_conn()
        deadline = time.monotonic() + timeout
        try:
            while not conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                if not self._proc.is_alive():
                    raise self._gone(op, None)
                if time.monotonic() >= deadline:
                    raise IOProcessGone(f"runner I/O process: no answer to {op} in {timeout:.0f} s")
            ok, value = conn.recv()
        except (OSError, EOFError) as e:
            raise self._gone(op, e) from e
        if not ok:
            raise value
        return value

    def _live_conn(self) -> Connection:
        if self._conn is None or self._proc is None:
            raise IOProcessGone("runner I/O process not started")
        return self._conn

    def _gone(self, op: str, cause: BaseException | None) -> IOProcessGone:
        code = None if self._proc is None else self._proc.exitcode
        return IOProcessGone(f"runner I/O process gone during {op} (exit code {code}): {cause or 'no answer'}")


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling (VideogenErrors do: their code is in ``__dict__``), else a
    ``Retryable`` with its text (the runner's own failure policy then applies)."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - any unpicklable exception
        return Retryable(f"{type(err).__name__}: {err}")


# ---- the child ------------------------------------------------------------------------------
def serve(conn: Connection, settings: Settings, model: str, runner_id: str, progress_interval_s: float,
          flags: Any) -> None:
    """The I/O process: one ``RunnerIO`` and a loop answering the compute process's calls."""
    from gpu_runner.__main__ import die_with_parent
    from gpu_runner.io import Active, RunnerIO

    die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM):  # the parent decides when to stop, and drains us first
        signal.signal(sig, signal.SIG_IGN)
    configure_logging(settings.log_level, settings.log_format)
    io = RunnerIO(settings, model, runner_id=runner_id, progress_interval_s=progress_interval_s)
    held: dict[int, Active] = {}
    ids = iter(range(1, 1 << 62))

    def cancelled(active: Active) -> None:  # on the I/O loop's thread
        if active.handle:
            flags[active.handle % SLOTS] = 1

    io.on_cancelled = cancelled
    try:
        io.start()
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails to start
        conn.send((False, IOProcessGone(f"runner I/O could not start: {type(e).__name__}: {e}")))
        return
    stop = threading.Event()

    def watch_connection() -> None:
        while not stop.wait(0.5):
            flags[CONNECTED] = 1 if io.connected() else 0

    flags[CONNECTED] = 1 if io.connected() else 0
    threading.Thread(target=watch_connection, name="bus-connected", daemon=True).start()
    conn.send((True, None))

    def take(handle: int) -> Active:
        return held.pop(handle)

    def next_segment(timeout_s: float) -> tuple[int, SegmentJob, datetime | None, SegmentInputs | None,
                                                BaseException | None] | None:
        active = io.next_segment(timeout_s)
        if active is None:
            return None
        handle = active.handle = next(ids)
        flags[handle % SLOTS] = 1 if active.cancelled else 0  # after the handle: a watch firing now is seen
        held[handle] = active
        # its inputs now, not in a second round trip (the compute side asks for them next, every time)
        try:
            inputs, error = io.fetch_inputs(active), None
        except Exception as e:  # noqa: BLE001 - raised on the compute side by fetch_inputs
            inputs, error = None, _portable(e)
        return handle, active.job, active.stored_at, inputs, error

    def submit_result(handle: int, name: str, shape: tuple[int, ...], dtype: str, elapsed_s: float) -> None:
        shm = shared_memory.SharedMemory(name=name)
        try:
            frames: np.ndarray = np.array(np.ndarray(shape, np.dtype(dtype), buffer=shm.buf))  # our own copy
        finally:
            shm.close()
            shm.unlink()
        io.submit_result(take(handle), frames, elapsed_s)

    ops: dict[str, Any] = {
        "next_segment": next_segment,
        "begin_render": lambda h: io.begin_render(held[h]),
        "progress": lambda h, step, steps: io.progress(held[h], step, steps),
        "submit_result": submit_result,
        "fail": lambda h, err: io.fail(take(h), err),
        "abandon": lambda h: io.abandon(take(h)),
        "hand_back": lambda h, delay_s: io.hand_back(take(h), delay_s),
        "replan": lambda h, frames, reason: io.replan(take(h), frames, reason),
        "fetch_lora": io.fetch_lora,
        "pending_uploads": io.pending_uploads,
    }
    drain_s = 120.0
    try:
        while True:
            try:
                op, args, reply = conn.recv()
            except (EOFError, OSError):
                log.warning("runner_io_parent_gone_draining", held=len(held))
                break
            if op == "close":
                drain_s = float(args[0])
                break
            try:
                value, ok = ops[op](*args), True
            except BaseException as e:  # noqa: BLE001 - returned to the caller as its exception
                value, ok = _portable(e), False
                if not reply:
                    log.error("runner_io_call_failed", op=op, error=f"{type(e).__name__}: {e}")
            if reply:
                try:
                    conn.send((ok, value))
                except (EOFError, OSError):
                    break
    finally:
        stop.set()
        io.close(drain_s)
        with contextlib.suppress(EOFError, OSError):
            conn.send((True, None))
        conn.close()
