"""Progress in long epochs: plain lines in a piped or filed console at most every 30 s, the first
15 s after the run opens; a live counter only on a terminal; the published lines unchanged."""
import io

import numpy as np
import torch

from Utils.training.Training import RunLog, train_epoch


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _progress_lines(text):
    return [line.split(": ", 1)[1] for line in text.splitlines() if ": Progress: " in line]


def test_a_piped_console_gets_a_plain_line_at_most_every_30_seconds():
    clock, out = Clock(), io.StringIO()
    log = RunLog(stream=out, clock=clock)
    assert log.plain_progress  # StringIO is not a terminal, as | tee is not
    clock.now = 4.0  # the stage spent 4 s loading before its first epoch
    progress = log.start("train step", 10)
    for step, now in enumerate((10.0, 14.9, 15.0, 30.0, 44.9, 45.0, 70.0), 1):
        clock.now = now
        progress.update(step)
    progress.close()
    assert _progress_lines(out.getvalue()) == [
        "Progress: train step 3/10, 11 s elapsed, about 26 s left",  # 15 s after the log opened
        "Progress: train step 6/10, 41 s elapsed, about 27 s left",  # then 30 s after the line before
    ]


def test_a_terminal_console_gets_no_plain_lines():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    clock, out = Clock(), Terminal()
    log = RunLog(stream=out, clock=clock)
    progress = log.start("train step", 3)
    for step in (1, 2, 3):
        clock.now += 100
        progress.update(step)
    assert not log.plain_progress and out.getvalue() == ""


def test_train_epoch_reports_its_steps_and_keeps_its_result():
    """An epoch of 6 steps of 20 s each: a line after step 1 (20 s ≥ 15), then steps 3 and 5 (each
    ≥ 30 s after the one before); the returned means are those of the same epoch without a log."""
    weight = torch.nn.Parameter(torch.ones(3))

    def loss_fn(ancs, poss, negs):
        clock.now += 20.0
        value = (weight * torch.as_tensor(ancs, dtype=torch.float32)).sum()
        return {"total": value, "main": value}

    batches = [(np.arange(3), np.arange(3), np.arange(3)) for _ in range(6)]
    clock, out = Clock(), io.StringIO()
    log = RunLog(stream=out, clock=clock)
    quiet = train_epoch(loss_fn, batches, 6, torch.optim.SGD([weight], lr=0.0), "cpu", None)
    clock.now = 0.0
    logged = train_epoch(loss_fn, batches, 6, torch.optim.SGD([weight], lr=0.0), "cpu", log)
    assert logged == quiet
    assert _progress_lines(out.getvalue()) == [
        "Progress: train step 1/6, 20 s elapsed, about 100 s left",
        "Progress: train step 3/6, 60 s elapsed, about 60 s left",
        "Progress: train step 5/6, 100 s elapsed, about 20 s left",
    ]
