"""Evaluation suites, one module each."""
from suites import translation  # noqa: F401  (registers the suite)
from suites import gsm8k  # noqa: F401  (registers the suite)
from suites import lm_eval_tasks  # noqa: F401  (registers the suite)
from suites import retention  # noqa: F401  (registers the suite)
from suites import safety  # noqa: F401  (registers the suite)
from suites import ifeval  # noqa: F401  (registers the suite)
from suites import alpaca_eval  # noqa: F401  (registers the suite)
from suites import mt_bench  # noqa: F401  (registers the suite)
