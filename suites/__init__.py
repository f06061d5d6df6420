"""Evaluation suites, one module each."""
from suites import translation  # noqa: F401  (registers the suite)
from suites import gsm8k  # noqa: F401  (registers the suite)
from suites import lm_eval_tasks  # noqa: F401  (registers the suite)
from suites import retention  # noqa: F401  (registers the suite)
from suites import safety  # noqa: F401  (registers the suite)
