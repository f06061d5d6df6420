"""Progress output where stderr is no terminal (a log file, a batch job)."""

from __future__ import annotations

import pytest

from harness.progress import progress_bar


@pytest.mark.parametrize("every, expected", [("0", ["1/4", "2/4", "3/4"]), ("3600", [])])
def test_plain_progress_lines_when_not_a_terminal(capsys, monkeypatch, every, expected):
    monkeypatch.setenv("RADIS_BENCH_PROGRESS_EVERY", every)
    with progress_bar("decode [original]", total=4) as bar:
        for _ in range(4):
            bar.advance(1, tokens=10)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("decode [original]: ")]
    # at most one line per interval, none for the last advance (the finished bar prints itself)
    assert [l.split(":")[1].split(",")[0].strip() for l in lines] == expected
    assert all("tok/s" in l and "ETA" in l for l in lines)
