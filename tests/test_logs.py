"""Training progress on the console (rca.engine.logs): the log line's fields and when it is printed."""

from __future__ import annotations

import logging

import torch

from rca.engine.logs import TrainingProgress, format_step, setup_logger


def test_format_step_known_line():
    line = format_step(120, 3000, {"loss": 0.512, "cls": 0.41, "contrast": 0.102}, 0.0096, 0.45, 1126.4)
    # ETA: (3000 - 120) iterations x 0.45 s = 1296 s = 21 min 36 s
    assert line == ("iter 120/3000  loss 0.5120  cls 0.4100  contrast 0.1020  lr 9.60e-03  0.450 s/iter  "
                    "eta 0:21:36  peak 1126 MiB")
    assert "eta 0:00:00" in format_step(3000, 3000, {"loss": 1.0}, 0.1, 0.45, 0.0)


def test_progress_logs_every_interval_over_the_whole_run_and_restores_the_handlers(capsys):
    log = setup_logger("test_progress", None, True)
    handlers = list(log.handlers)
    with TrainingProgress(log, total=7, done=1, interval=2, device=torch.device("cpu"), desc="train") as progress:
        for k in range(6):  # a resume at iteration 1: iterations 2..7
            progress.step({"loss": 1.0 / (k + 1)}, lr=0.01)
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if "iter " in line]
    assert [line.split("iter ")[1].split()[0] for line in lines] == ["2/7", "4/7", "6/7"]
    assert "loss 1.0000" in lines[0] and "loss 0.2000" in lines[2]  # iterations 2 and 6: k = 0 and k = 4
    assert "7/7" in err  # the bar counts the whole run, from the resumed iteration
    assert log.handlers == handlers  # tqdm's redirection is undone


def test_progress_is_silent_when_disabled(capsys):
    log = setup_logger("test_progress_off", None, False)
    with TrainingProgress(log, total=4, done=0, interval=1, device=torch.device("cpu"), desc="train",
                          enabled=False) as progress:
        for _ in range(4):
            progress.step({"loss": 1.0}, lr=0.01)
    out, err = capsys.readouterr()
    assert "iter " not in out + err and "4/4" not in err
    logging.getLogger("test_progress_off").handlers.clear()
