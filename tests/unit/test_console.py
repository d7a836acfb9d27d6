"""The quiet console: library noise to the log file, a bounded number of progress lines, the file follows the run."""

from __future__ import annotations

import io
import logging
import warnings

from pipeline.console import Console, ProgressView, progress_line


def _console(tmp_path, **kw) -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(tmp_path / "logs", stream=stream, **kw), stream


def test_library_logs_and_warnings_go_to_the_file_not_the_console(tmp_path):
    noisy = logging.getLogger("ray.data.test_console")
    own = logging.StreamHandler(io.StringIO())  # a library's console handler, as ray / mlflow install them
    noisy.addHandler(own)
    noisy.propagate = False
    console, stream = _console(tmp_path)
    with console:
        noisy.warning("execution finished in 3 s")
        logging.getLogger("open_clip").info("Loaded dive-tiny model config.")
        warnings.warn("all_gather is deprecated", FutureWarning, stacklevel=1)
        console.say("[dive] MLflow run abc")
        log = console.path.read_text()
    assert own.stream.getvalue() == ""  # moved off the console handler while the console is on
    assert "execution finished" in log and "Loaded dive-tiny" in log and "all_gather is deprecated" in log
    assert stream.getvalue() == "[dive] MLflow run abc\n" and "[dive] MLflow run abc" in log
    assert own in noisy.handlers  # given back afterwards
    noisy.removeHandler(own)


def test_verbose_leaves_library_handlers_alone(tmp_path):
    noisy = logging.getLogger("mlflow.test_console")
    own = logging.StreamHandler(io.StringIO())
    noisy.addHandler(own)
    with _console(tmp_path, verbose=True)[0]:
        noisy.warning("shown")
    assert "shown" in own.stream.getvalue()
    noisy.removeHandler(own)


def test_attach_moves_the_log_with_its_lines_and_appends_on_resume(tmp_path):
    console, _ = _console(tmp_path)
    with console:
        console.write("before the run folder existed")
        first = console.attach(tmp_path / "run")
        console.write("after")
    assert first == tmp_path / "run" / "console.log"
    assert first.read_text().splitlines() == ["before the run folder existed", "after"]
    assert not list((tmp_path / "logs").glob(".console-*"))
    with _console(tmp_path)[0] as again:  # a resumed run: same folder, earlier lines kept
        again.write("resumed")
        again.attach(tmp_path / "run")
    assert first.read_text().splitlines()[-1] == "resumed" and len(first.read_text().splitlines()) == 3


def test_ray_worker_lines_are_written_with_their_origin(tmp_path):
    console, stream = _console(tmp_path)
    with console:
        console._ray_lines(
            {"lines": ["Loaded model", "step 1"], "pid": 42, "ip": "1.2.3.4", "actor_name": "W"}
        )
        log = console.path.read_text()
    assert "(W pid=42, ip=1.2.3.4) Loaded model" in log and "(W pid=42, ip=1.2.3.4) step 1" in log
    assert stream.getvalue() == ""


def test_progress_line_shows_what_a_user_looks_for():
    state = {
        "step": 48,
        "total": 96,
        "epoch": 2,
        "epochs": 6,
        "terms": {"loss": 1.25, "loss_cl": 1.0, "loss_avl": 0.01, "temperature": 0.01},
        "samples_per_s": 850.4,
        "val/objective": 0.7,
    }
    line = progress_line(state, eta_s=75)
    assert line.startswith("step 48/96 (50%)  epoch 3/6  loss 1.25  cl 1  avl 0.01  val 0.7")
    assert "850 samples/s" in line and line.endswith("ETA 1 min 15 s") and "temperature" not in line


def test_without_a_tty_the_view_prints_about_one_line_per_tenth_of_the_run():
    stream = io.StringIO()
    view = ProgressView(board=None, stream=stream, tty=False)
    for step in range(1, 1001):
        view.show({"step": step, "total": 1000, "terms": {"loss": 1.0}})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # 0 %, 10 %, …, 100 %: a 1000-step run prints no more than a 96-step one
    assert lines[0].startswith("[dive] step 1/1000") and lines[-1].startswith("[dive] step 1000/1000 (100%)")
    assert "ETA" in lines[5] and "ETA" not in lines[-1]


def test_a_log_that_never_found_its_run_folder_is_kept_only_when_it_holds_more(tmp_path):
    console, _ = _console(tmp_path)
    with console:
        console.say("[dive] data … · outputs …")  # what the user saw anyway
    assert not list((tmp_path / "logs").rglob("*.log")) and not list((tmp_path / "logs").glob(".console-*"))
    console, _ = _console(tmp_path)
    with console:
        console.say("[dive] data …")
        logging.getLogger("ray.test_console_keep").warning("the demo build failed half-way")
    kept = list((tmp_path / "logs" / "logs").glob("console-*.log"))
    assert len(kept) == 1 and "half-way" in kept[0].read_text() and console.path == kept[0]
