"""End to end: wall time and peak memory of the README's main command, from cold and cached.

Runs ``radis-bench run --methods radis,vanilla,sdft`` (what ``make demo`` runs) in a
subprocess twice into the same fresh run directory: first from cold (empty run directory,
generation cache and converted-model cache, so the embedded GGUF is converted too), then
again with everything cached. Peak memory is the largest resident set of the process,
sampled every 0.2 s; each line the run prints is timestamped with the memory at that
moment, so the phase that sets the peak is visible.

    python benchmarks/end_to_end.py
    python benchmarks/end_to_end.py --keep /tmp/e2e   # keep the run directory and caches
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

COMMAND = ["run", "--methods", "radis,vanilla,sdft"]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (MiB)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            pass
    return total


def timed_run(args: list[str], env: dict, log: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    peak = {"mb": 0.0, "at": ""}
    last_line = [""]
    done = threading.Event()

    def sample():
        while not done.is_set():
            mb = tree_rss_mb(proc.pid)
            if mb > peak["mb"]:
                peak.update(mb=mb, at=last_line[0])
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    with log.open("w") as fh:
        for line in proc.stdout:
            line = line.rstrip()
            if line.strip() and "━" not in line:
                last_line[0] = line.strip()[:100]
                fh.write(f"{time.perf_counter() - start:7.1f}s {tree_rss_mb(proc.pid):7.0f}MiB  {line}\n")
                fh.flush()
    rc = proc.wait()
    done.set()
    thread.join()
    return {"rc": rc, "seconds": time.perf_counter() - start, "peak_mb": peak["mb"], "peak_after": peak["at"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", default=None, help="folder for the run directory, caches and logs (default: a temp folder)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `radis-bench run` arguments")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="radis-e2e-"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = {**os.environ, "RADIS_BENCH_CACHE": str(root / "cache"), "RADIS_BENCH_MODELS": str(root / "models"),
           "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    run = COMMAND + ["--out", str(root / "run")] + args.extra
    print(f"command: radis-bench {' '.join(run)}")
    results = {}
    for name in ("cold", "cached"):
        r = timed_run(run, env, root / f"{name}.log")
        results[name] = r
        print(f"{name}: rc {r['rc']}, wall {r['seconds']:.1f}s ({r['seconds'] / 60:.1f} min), peak memory {r['peak_mb']:.0f} MiB "
              f"({r['peak_mb'] / 1024:.2f} GiB), peak during: {r['peak_after']!r}; log {root / (name + '.log')}")
        if r["rc"]:
            sys.exit(f"the {name} run failed; see its log")
    print(f"targets: cold <= 420 s ({'met' if results['cold']['seconds'] <= 420 else 'MISSED'}), cached <= 10 s "
          f"({'met' if results['cached']['seconds'] <= 10 else 'MISSED'}), peak <= 4 GiB "
          f"({'met' if max(r['peak_mb'] for r in results.values()) <= 4096 else 'MISSED'})")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
