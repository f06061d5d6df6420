# The two commands a newcomer types: `make demo` and `make test`.
.PHONY: setup demo test

setup:
	@bash scripts/setup.sh

# The main job on the embedded default model and the built-in starter suite, offline.
demo: setup
	.venv/bin/radis-bench run --methods radis,vanilla,sdft --out runs/demo

# Unit tests plus the slow real-model and real-data checks (data: ../shared/data or RADIS_BENCH_DATA).
test: setup
	.venv/bin/python -m pytest
