"""Progress output where stderr is no terminal (a log file, a batch job)."""

from __future__ import annotations

from harness.progress import progress_bar


def test_plain_progress_lines_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("RADIS_BENCH_PROGRESS_EVERY", "0")
    with progress_bar("decode [original]", total=4) as bar:
        for _ in range(4):
            bar.advance(1, tokens=10)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("decode [original]: ") and "ETA" in l]
    # one line per advance except the last (the finished bar prints itself)
    assert [l.split(":")[1].split(",")[0].strip() for l in lines] == ["1/4", "2/4", "3/4"]
    assert "tok/s" in lines[0]


def test_no_plain_lines_before_the_interval(capsys, monkeypatch):
    monkeypatch.setenv("RADIS_BENCH_PROGRESS_EVERY", "3600")
    with progress_bar("decode [original]", total=3) as bar:
        for _ in range(3):
            bar.advance(1, tokens=10)
    err = capsys.readouterr().err
    assert not [l for l in err.splitlines() if l.startswith("decode [original]: ")]
