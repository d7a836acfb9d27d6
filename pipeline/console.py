"""What a user sees in the terminal: one live progress line per run, the results — and nothing else.

A run's console used to carry every worker's open_clip lines, Ray Train's reports, Ray Data's "execution
finished", raylet warnings and FutureWarnings (143 lines for the demo). :class:`Console` sends all of that to a
log file in the run's output folder (``console.log``; ``-v/--verbose`` keeps it on the console too), and
:class:`ProgressView` draws the step / total, epoch, loss, samples/s and ETA that rank 0 posts to a
:class:`ProgressBoard` actor: a ``tqdm`` bar at a terminal, a plain line every tenth of the run without one
(CI, ``ray job submit``). Errors still reach the console whole: a failed run raises on the driver, and its
traceback names the worker's.

Worker output reaches the driver through Ray's log stream (``log_to_driver``); the console swaps Ray's printing
handler on that stream for one that writes the file (:meth:`Console.capture_ray`). That handler registry is
Ray-internal (``ray._private.ray_logging``): if it moves, the console falls back to Ray's own printing, noisy but
whole.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dive.redact import mask_text

if TYPE_CHECKING:
    from dive.config import Config

#: Loggers whose console handlers the quiet console moves to the log file (their children follow).
NOISY_LOGGERS = (
    "ray",
    "mlflow",
    "alembic",
    "open_clip",
    "py.warnings",
    "urllib3",
    "filelock",
    "huggingface_hub",
)
_RAY_HANDLER = "ray_print_logs"  # the name Ray's ray.init gives its printing handler
_FILE_HANDLER = "dive_console_log"


class Console:
    """Where a command's output goes: results and progress to the terminal, third-party noise to a log file.

    Start it before anything noisy is imported (``with Console(...)``); :meth:`capture_ray` once Ray is up;
    :meth:`attach` when the run's output folder exists (the lines so far move with the file).
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        verbose: bool = False,
        stream: IO[str] | None = None,
        capture_fd: bool = True,
    ) -> None:
        self.verbose = verbose
        self.stream = stream or sys.stderr
        # Native code (Ray's C++ core worker in this process) writes to file descriptor 2 directly, past any
        # Python logging: with capture_fd, fd 2 goes to the log file and sys.stderr to the terminal.
        self._capture_fd = capture_fd and not verbose and stream is None
        self._saved_fd: int | None = None
        self._saved_stderr: IO[str] | None = None
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / f".console-{os.getpid()}.log"
        self._file = self.path.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self._handler = logging.StreamHandler(self._file)
        self._handler.set_name(_FILE_HANDLER)
        self._handler.setFormatter(_MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._moved: list[tuple[logging.Logger, logging.Handler]] = []
        self._added: list[logging.Logger] = []  # non-propagating loggers given our file handler
        self._saved_root_level = logging.root.level
        self._said = 0  # bytes of the file that say() wrote: what the console showed anyway

    # ------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Console:
        logging.captureWarnings(True)  # FutureWarnings etc. become py.warnings log records → the file
        logging.root.addHandler(self._handler)
        logging.root.setLevel(min(logging.root.level or logging.WARNING, logging.INFO))
        self.quiet()
        if self._capture_fd:
            self._redirect_fd()
        return self

    def _redirect_fd(self) -> None:
        try:
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            return  # a captured or in-memory stderr: nothing native to catch
        sys.stderr.flush()
        self._saved_fd, self._saved_stderr = os.dup(fd), sys.stderr
        os.dup2(self._file.fileno(), fd)
        self.stream = os.fdopen(os.dup(self._saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        sys.stderr = self.stream

    def _restore_fd(self) -> None:
        if self._saved_fd is None or self._saved_stderr is None:
            return
        self.stream.flush()
        os.dup2(self._saved_fd, self._saved_stderr.fileno())
        os.close(self._saved_fd)
        sys.stderr, self._saved_fd = self._saved_stderr, None
        self.stream.close()
        self.stream = sys.stderr

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.release_ray()
        self._restore_fd()
        for logger, handler in self._moved:
            logger.addHandler(handler)
        self._moved.clear()
        for logger in self._added:
            logger.removeHandler(self._handler)
        self._added.clear()
        logging.root.removeHandler(self._handler)
        logging.root.setLevel(self._saved_root_level)
        logging.captureWarnings(False)
        with self._lock:
            self._file.close()
        self._keep_unattached()

    def _keep_unattached(self) -> None:
        """A command that ended before it had a run folder (a bad input, say): its log is deleted when it holds
        only what the console showed, else kept as ``<log dir>/logs/console-<time>-<pid>.log``."""
        if not self.path.name.startswith(".console-") or not self.path.exists():
            return
        if self.path.stat().st_size <= self._said:
            self.path.unlink()
            return
        kept = self.path.parent / "logs" / f"console-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        kept.parent.mkdir(exist_ok=True)
        os.replace(self.path, kept)
        self.path = kept

    def attach(self, folder: str | Path, name: str = "console.log") -> Path:
        """Move the log file into ``folder`` (the run's output folder); writing goes on in the same file."""
        target = Path(folder) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self.path != target:
                if target.exists():  # a resumed run: keep its earlier lines, append ours
                    old, self._file = self._file, target.open("a", encoding="utf-8", buffering=1)
                    old.flush()
                    self._file.write(self.path.read_text(encoding="utf-8"))
                    self._handler.setStream(self._file)
                    if self._saved_fd is not None and self._saved_stderr is not None:
                        os.dup2(self._file.fileno(), self._saved_stderr.fileno())
                    old.close()
                    self.path.unlink()
                else:
                    os.replace(self.path, target)  # the open file moves with its name
                self.path = target
        return target

    # ------------------------------------------------------------------------------------------ output
    def say(self, text: str) -> None:
        """A line for the user: the console and the log file (a URI's secrets masked in both)."""
        text = mask_text(text)
        print(text, file=self.stream, flush=True)
        self.write(text)
        self._said += len((text.rstrip("\n") + "\n").encode())

    def write(self, text: str) -> None:
        """A line for the log file only (a URI's secrets masked)."""
        with self._lock:
            if not self._file.closed:
                self._file.write(mask_text(text).rstrip("\n") + "\n")

    def quiet(self) -> None:
        """Move the console handlers of :data:`NOISY_LOGGERS` (and their children) to the log file. Idempotent:
        call it again after imports that configure their own handlers (``ray.init``, ``import ray.data``)."""
        if self.verbose:
            return
        names = [n for n in logging.root.manager.loggerDict if n.startswith(NOISY_LOGGERS)]
        for logger in [logging.root, *map(logging.getLogger, names)]:
            for handler in list(logger.handlers):
                if _is_console(handler):
                    logger.removeHandler(handler)
                    self._moved.append((logger, handler))
            if logger is logging.root:
                continue
            if not logger.propagate and self._handler not in logger.handlers:
                logger.addHandler(self._handler)
                self._added.append(logger)

    def capture_ray(self) -> None:
        """Send the workers' stdout/stderr that Ray streams to this driver into the log file (after ray.init)."""
        self.quiet()
        if self.verbose:
            return
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:  # Ray moved its internals: keep its own printing (noisy, nothing lost)
            return
        dispatcher.remove_handler(_RAY_HANDLER)
        dispatcher.remove_handler(_FILE_HANDLER)
        dispatcher.add_handler(_FILE_HANDLER, self._ray_lines)
        # The GCS's messages to this driver (raylet "N worker processes started" warnings, a worker's death)
        # are printed by ray._private.worker.print_to_stdstream, which its listener looks up at each call.
        import ray._private.worker as ray_worker

        original = getattr(ray_worker, "print_to_stdstream", None)
        if original is not None and not getattr(original, "_dive", False):

            def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
                self._ray_lines(data)
                if not all(str(line).lstrip().startswith("WARNING") for line in data.get("lines", ())):
                    original(data, ignore_prefix)  # errors still reach the console whole

            print_to_stdstream._dive = True  # type: ignore[attr-defined]
            print_to_stdstream._original = original  # type: ignore[attr-defined]
            ray_worker.print_to_stdstream = print_to_stdstream

    def release_ray(self) -> None:
        if "ray" not in sys.modules:
            return
        try:
            import ray._private.worker as ray_worker
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:
            return
        dispatcher.remove_handler(_FILE_HANDLER)
        patched = getattr(ray_worker, "print_to_stdstream", None)
        if getattr(patched, "_dive", False):
            ray_worker.print_to_stdstream = patched._original  # type: ignore[union-attr]

    def _ray_lines(self, data: Mapping[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name") or "worker"
        prefix = f"({who} pid={data.get('pid')}, ip={data.get('ip')}) "
        with self._lock:
            if not self._file.closed:
                self._file.writelines(prefix + mask_text(line) + "\n" for line in data.get("lines", ()))


def error_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one line for the console: its first line (a library's message may run to pages), with
    any URI's secrets masked (an HTTP client's error may quote the URL it was given, password included)."""
    return mask_text((str(err).strip().splitlines() or [type(err).__name__])[0])[:limit]


class _MaskingFormatter(logging.Formatter):
    """The log file's formatter: a library's log record (tracebacks included) may quote a URI with its secret."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(super().format(record))


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes to a terminal stream: plain StreamHandlers and their kin (Ray's PlainRayHandler,
    MLflow's handler on its own stream object, rich's), never a file."""
    if handler.get_name() == _FILE_HANDLER:
        return False
    return (
        isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ) or type(handler).__name__ == "RichHandler"


def start_ray(cfg: Config, console: Console | None, min_cpus: float = 0) -> None:
    """Join or start Ray (:func:`pipeline.ray_env.init_ray`); with a console, Ray's own log lines and the
    workers' go to its file."""
    from pipeline.ray_env import init_ray

    if console is not None:
        import ray.data  # noqa: F401  (configures Ray's loggers, which the console then quiets)

        console.quiet()
    init_ray(cfg, min_cpus=min_cpus)
    if console is not None:
        console.capture_ray()


@contextmanager
def command_console(folder: str | Path, name: str, verbose: bool = False) -> Iterator[Console]:
    """The console of a command (``evaluate``, ``wise``, ``dive data``): its log ends as ``folder/name``."""
    with Console(folder, verbose=verbose) as console:
        console.attach(folder, name)
        yield console


# ---------------------------------------------------------------------------------------------------- progress
def board_actor() -> Any:
    """A :class:`ProgressBoard` actor (no CPU): rank 0 posts to it, the driver's view reads it."""
    import ray

    from pipeline.ray_env import on_driver_node

    return ray.remote(num_cpus=0)(ProgressBoard).options(**on_driver_node()).remote()


class ProgressBoard:
    """The latest training state of one run (step, total, epoch, loss terms, samples/s), as rank 0 posts it."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def post(self, state: Mapping[str, Any]) -> None:
        self.state = {**self.state, **state}

    def latest(self) -> dict[str, Any]:
        return self.state


def progress_line(state: Mapping[str, Any], eta_s: float | None = None) -> str:
    """``step 48/96 (50%)  epoch 3/6  loss 1.23  cl 1.1  avl 0.01  pvl 0.02  val 0.7  850 samples/s  ETA 32 s``."""
    step, total = int(state.get("step", 0)), int(state.get("total", 0))
    parts = [f"step {step}/{total}" + (f" ({100 * step // total}%)" if total else "")]
    if "epochs" in state:
        parts.append(f"epoch {min(int(state.get('epoch', 0)) + 1, int(state['epochs']))}/{state['epochs']}")
    parts += [f"{k} {v:.4g}" for k, v in _terms(state).items()]
    if state.get("samples_per_s"):
        parts.append(f"{state['samples_per_s']:.0f} samples/s")
    if eta_s is not None and 0 < step < total:
        parts.append(f"ETA {_duration(eta_s)}")
    return "  ".join(parts)


def _terms(state: Mapping[str, Any]) -> dict[str, float]:
    terms = {
        k.removeprefix("loss_"): float(v) for k, v in state.get("terms", {}).items() if k.startswith("loss")
    }
    if "val/objective" in state:
        terms["val"] = float(state["val/objective"])
    return terms


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class ProgressView:
    """The driver's view of a :class:`ProgressBoard`: polled on a thread while ``TorchTrainer.fit`` blocks.

    At a terminal a ``tqdm`` bar; otherwise a plain line each time the run passes another tenth of its steps
    (at most 11 lines a run, whatever its length)."""

    def __init__(self, board: Any, stream: IO[str], *, tty: bool | None = None, poll_s: float = 0.5) -> None:
        self.board, self.stream, self.poll_s = board, stream, poll_s
        self.tty = stream.isatty() if tty is None else tty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dive-progress", daemon=True)
        self._bar: Any = None
        self._last_tenth = -1
        self._first: tuple[float, int] | None = None  # (time, step) of the first step seen: the ETA's origin
        self.state: dict[str, Any] = {}

    def __enter__(self) -> ProgressView:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()  # the last state, so the bar / line ends at the run's last step
        if self._bar is not None:
            self._bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()

    def _poll(self) -> None:
        import ray

        try:
            state = ray.get(self.board.latest.remote(), timeout=5)
        except Exception:  # the board is gone with a failed run: the error itself is reported by fit()
            return
        if state and state.get("step"):
            self.show(state)

    def show(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)
        step, total = int(state["step"]), int(state.get("total") or 0)
        if self.tty:
            self._draw_bar(step, total, state)
            return
        tenth = 10 * step // total if total else step
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            print(f"[dive] {progress_line(state, self.eta(step, total))}", file=self.stream, flush=True)

    def eta(self, step: int, total: int) -> float | None:
        """Seconds left at the rate since the first step seen (start-up time is not a step's cost)."""
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, step)
        t0, s0 = self._first
        return (now - t0) / (step - s0) * (total - step) if step > s0 else None

    def _draw_bar(self, step: int, total: int, state: Mapping[str, Any]) -> None:  # tqdm: its own ETA
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=total or None, desc="train", unit="step", file=self.stream, dynamic_ncols=True
            )
        self._bar.update(step - self._bar.n)
        postfix = {k: f"{v:.3g}" for k, v in _terms(state).items()}
        if "epochs" in state:
            postfix["epoch"] = (
                f"{min(int(state.get('epoch', 0)) + 1, int(state['epochs']))}/{state['epochs']}"
            )
        if state.get("samples_per_s"):
            postfix["samples/s"] = f"{state['samples_per_s']:.0f}"
        self._bar.set_postfix(postfix, refresh=True)


@contextmanager
def live_progress(board: Any, console: Console | None) -> Iterator[ProgressView | None]:
    """A :class:`ProgressView` of ``board`` on ``console``'s stream, or nothing without a console (a sweep
    trial: Tune's own table is the view there)."""
    if board is None or console is None:
        yield None
        return
    with ProgressView(board, console.stream) as view:
        yield view
