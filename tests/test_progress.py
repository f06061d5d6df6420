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


def test_no_estimate_before_the_first_item(capsys, monkeypatch):
    monkeypatch.setenv("RADIS_BENCH_PROGRESS_EVERY", "0")
    with progress_bar("decode [original]", total=10) as bar:
        bar.advance(0, tokens=50)  # tokens decoded, no item finished yet
        bar.advance(2, tokens=50)
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("decode [original]: ")]
    assert lines[0].startswith("decode [original]: 0/10,") and lines[0].endswith("ETA unknown")
    assert lines[1].startswith("decode [original]: 2/10,") and lines[1].endswith("ETA 0s")  # microseconds elapsed
