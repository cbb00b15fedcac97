"""Ctrl-C while the command line starts is held back to the first checkpoint (compress/startup.py)."""

import os
import signal

import pytest

from compress import startup


@pytest.fixture
def fresh_startup(monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(startup, "_pending", False)
    yield startup
    signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_during_start_up_is_held_back_then_stops_at_the_checkpoint(fresh_startup, capsys):
    fresh_startup.defer_ctrl_c()
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt here: imports in progress would swallow or mangle it
    assert fresh_startup.interrupted_while_starting()
    with pytest.raises(SystemExit) as stop:
        fresh_startup.started()
    assert stop.value.code == 130
    assert capsys.readouterr().err == "interrupted while starting; nothing was done\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_after_the_checkpoint_ctrl_c_raises_as_usual(fresh_startup):
    fresh_startup.defer_ctrl_c()
    fresh_startup.started()  # nothing pending: carries on
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 0) if hasattr(signal, "sigtimedwait") else None


def test_the_python_api_without_the_command_line_is_left_alone(fresh_startup):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fresh_startup.started()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
