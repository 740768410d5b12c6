"""kdsl-llm's line while it waits for the first token (engine/first_token_wait.py)."""
import io
import re
import time

from kdsl import cache
from engine.first_token_wait import FirstTokenWait


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _wait_for(stream, seconds, builds=0, monkeypatch=None, delay=0.05):
    """Wait `seconds` in FirstTokenWait, `builds` programs built meanwhile; the text shown."""
    with FirstTokenWait(stream, delay=delay, interval=0.02) as wait:
        time.sleep(seconds / 2)
        if builds:
            monkeypatch.setitem(cache.stats, "builds", cache.stats["builds"] + builds)
        time.sleep(seconds / 2)
        wait.done()
        wait.done()                 # a second call changes nothing
        return stream.getvalue()


def test_a_quick_first_token_shows_nothing():
    assert _wait_for(Terminal(), 0.0, delay=1.0) == ""
    assert _wait_for(io.StringIO(), 0.0, delay=1.0) == ""


def test_a_terminal_sees_the_wait_grow_and_the_line_cleared(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = _wait_for(Terminal(), 0.4, builds=2, monkeypatch=monkeypatch)
    updates = text.split("\r\033[K")
    assert len(updates) >= 4                        # updated while waiting
    assert re.match(r"waiting for the first token: \d+ s, [01] kernel programs? built", updates[1])
    assert "2 kernel programs built" in updates[-2]
    assert "later runs reuse them" in updates[-2]
    assert updates[-1] == ""                        # cleared when the token came


def test_a_log_file_gets_one_line(monkeypatch):
    text = _wait_for(io.StringIO(), 0.3, builds=1, monkeypatch=monkeypatch)
    assert text.count("\n") == 1 and "\r" not in text
    assert re.match(r"waiting for the first token: \d+ s, [01] kernel programs? built \(a device's "
                    r"first run compiles its kernels; later runs reuse them\)\n$", text)


def test_a_narrow_terminal_gets_one_row(monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")
    updates = _wait_for(Terminal(), 0.2).split("\r\033[K")
    assert len(updates) >= 3 and all(len(u) <= 49 for u in updates)
    assert updates[1].startswith("waiting for the first token")
