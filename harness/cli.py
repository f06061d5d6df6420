"""The ``radis-bench`` command line: list, run, report."""

from __future__ import annotations

import dataclasses
import inspect
import os
import signal
import sys
import types
import typing
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from harness.config.parse import apply_settings, read_config_file, resolve_config_path
from harness.config.settings import Budget, RunConfig, launched_processes, validate
from harness.errors import Terminated, UserError, interruption, on_sigint, on_sigterm
from harness.paths import check_folder, check_output_folder
from harness.plugins import registry
from harness.progress import console
from harness.report.claims import check_against_plan
from harness.report.render import render_report
from harness.report.rescore import rescore as run_rescore
from harness.run.dryrun import print_plan
from harness.run.plan import Plan, configure

# click's UsageError, whichever click typer uses (recent typer carries its own copy)
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _usage_error(ctx, err):
    """A mistake on the command line itself (a number that is not one, a missing argument, an
    unknown option or command): one line, exit 2, like every other mistake, not click's box."""
    where = " ".join(filter(None, [ctx.find_root().info_name or "radis-bench", ctx.info_name if ctx.parent else ""]))
    typer.echo(f"error: {err.format_message()} (see `{where} --help`)", err=True)
    raise typer.Exit(2)


class _OneLineCommand(TyperCommand):
    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except _UsageError as err:
            _usage_error(ctx, err)


class _OneLineGroup(TyperGroup):
    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except _UsageError as err:
            _usage_error(ctx, err)

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except _UsageError as err:
            _usage_error(ctx, err)


app = typer.Typer(
    cls=_OneLineGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Benchmark forgetting-mitigation methods (RaDis, vanilla FT, SDFT, self-KD, replay) for teaching chat LLMs translation.",
)


def _end_launched_process() -> None:
    """End a process of a multi-process launch whose run finished: everything is saved and
    the locks are released, so skip the interpreter's teardown, where one of torch's C++
    threads now and then aborts the finished process ("terminate called without an active
    exception", SIGABRT), and the launcher then reports the whole launch as failed."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _fail(message: str, code: int = 2) -> None:
    if launched_processes()[0] == 0:  # every process of a multi-process launch fails alike; one says so
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command("list", cls=_OneLineCommand)
def list_cmd() -> None:
    """List registered methods and suites with one-line descriptions and their papers."""
    from rich.table import Table

    out = console.__class__()  # stdout console
    try:
        items = (("Methods", registry.methods()), ("Suites", registry.suites()))
    except UserError as err:
        _fail(str(err))
    for title, found in items:
        table = Table(title=title, show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("description")
        for name, cls in sorted(found.items()):
            extra = " [dim](extension)[/dim]" if getattr(cls, "extension", False) else ""
            cite = f"\n[dim]{cls.citation}[/dim]" if getattr(cls, "citation", "") else ""
            table.add_row(name, cls.description + extra + cite)
        out.print(table)


def _split(values: Optional[List[str]]) -> Optional[list[str]]:
    if values is None:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


# Path parameters are declared readable=False: radis-bench checks every path itself (harness.paths), in
# one line, where click's own check would print a usage box.

# --- `run`: its options are generated from RunConfig's fields -----------------------------------
# A RunConfig field of a plain type is an option --field-name with the field's own help; a new
# field appears here without an edit. Mappings (budget, lora, method and suite options, sweep,
# analysis) are set with --set, --sweep or the config file; a few budget settings and the
# suites' run-level aliases have short options of their own (their help is their target's).
EXTRA_FLAGS = {"methods": ["-m"], "suites": ["-s"], "generation_backend": ["--backend"]}
REPEATABLE = {"methods", "suites"}  # given as a list: repeat the option or separate with commas
BUDGET_OPTIONS = {"steps": "steps", "batch_size": "batch_size", "lr": "learning_rate", "budget": "equalise"}
ALIAS_OPTIONS = {  # run-level names the built-in suites' options declare as aliases (README: Usage)
    "judge": "alpaca-eval annotator config (name or path) for AlpacaEval/MT-Bench.",
    "comet_model": "COMET checkpoint (hub name or local path): translation.comet_model.",
    "safety_classifier": "Llama-Guard-style classifier (hub id or path): safety.classifier.",
    "lm_eval_tasks": "Extra lm-eval tasks, comma-separated: lm_eval.tasks.",
    "extraction": "How a translation is cut from the output (first_paragraph, first_line, full): translation.extraction.",
}


def _run_fields() -> list:
    """The RunConfig fields that are options of their own."""
    hints = typing.get_type_hints(RunConfig)
    out = []
    for f in dataclasses.fields(RunConfig):
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None: the option's type is X
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if f.name in REPEATABLE or tp in (str, int, float, bool) or typing.get_origin(tp) is list:
            out.append((f, tp))
    return out


def _option(name: str, tp, help_text: str, extra: list[str] = ()) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    if name in REPEATABLE:
        annotation, default = Optional[List[str]], typer.Option(None, flag, *extra, help=help_text)
    elif tp is bool:
        annotation, default = Optional[bool], typer.Option(None, f"{flag}/--no-{flag[2:]}", *extra, help=help_text)
    else:  # numbers as typed; lists as comma-separated text, parsed like a config file's values
        annotation = Optional[tp] if tp in (int, float) else Optional[str]
        default = typer.Option(None, flag, *extra, help=help_text)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _section_fields() -> list[str]:
    """The RunConfig fields that are sections of settings, set with --set or the config file."""
    plain = {f.name for f, _ in _run_fields()}
    return [f.name for f in dataclasses.fields(RunConfig) if f.name not in plain]


def _run_parameters() -> list[inspect.Parameter]:
    params = [_option(f.name, tp, f.metadata.get("help", ""), EXTRA_FLAGS.get(f.name, [])) for f, tp in _run_fields()]
    budget = {f.name: f for f in dataclasses.fields(Budget)}
    hints = typing.get_type_hints(Budget)
    for option, target in BUDGET_OPTIONS.items():
        params.append(_option(option, hints[target], f"budget.{target}: {budget[target].metadata['help']}"))
    params += [_option(alias, str, help_text) for alias, help_text in ALIAS_OPTIONS.items()]
    keyword = inspect.Parameter.KEYWORD_ONLY
    params += [
        inspect.Parameter("sweep", keyword, annotation=Optional[List[str]], default=typer.Option(
            None, "--sweep", help="Ablation axis METHOD.option=v1,v2,... (repeat for the product of several axes of one method; "
                                  "budget.lr, budget.steps, lora.r ... too), e.g. radis.rationale_weight=0,0.25,0.5,1.")),
        inspect.Parameter("config", keyword, annotation=Optional[Path], default=typer.Option(
            None, "--config", "-c", readable=False, help="YAML or TOML file with the same settings (CLI overrides it), or a shipped preset: "
                                          "paper, paper-llama2.")),
        inspect.Parameter("set_", keyword, annotation=Optional[List[str]], default=typer.Option(
            None, "--set", help="Any setting as key=value, e.g. radis.rationale_weight=0.5 or budget.max_length=256; the "
                                "sections " + ", ".join(_section_fields()) + " take section.key=value (method and suite "
                                "options as METHOD.option or SUITE.option).")),
        inspect.Parameter("dry_run", keyword, annotation=bool, default=typer.Option(
            False, "--dry-run", help="Validate every input and print the plan; train and generate nothing.")),
        inspect.Parameter("only", keyword, annotation=Optional[List[str]], default=typer.Option(
            None, "--only", help="Run only some cells of the grid, e.g. method=radis,seed=1 or method=original (values joined "
                                 "with +; repeat to add cells). Cells run by separate processes into one --out make one "
                                 "leaderboard.")),
    ]
    return params


def run(**given) -> None:
    """Train every method under one budget and score every model on every suite."""
    config, set_, sweep, only, dry_run = (given.pop(k) for k in ("config", "set_", "sweep", "only", "dry_run"))
    try:
        cfg = RunConfig()
        if config is not None:
            config = resolve_config_path(config)
            configure(cfg, read_config_file(config), str(config))
        budget_given = {target: given.pop(option) for option, target in BUDGET_OPTIONS.items()}
        for name in REPEATABLE:
            given[name] = _split(given[name])
        configure(cfg, {k: v for k, v in given.items() if v is not None}, "the command line")
        apply_settings(cfg.budget, {k: v for k, v in budget_given.items() if v is not None}, "the command line")
        for item in set_ or []:
            _apply_set(cfg, item)
        swept = set()
        for item in sweep or []:
            axis, eq, values = item.partition("=")
            if not eq or "." not in axis or not values.strip():
                raise UserError(f"--sweep '{item}' must look like METHOD.option=v1,v2,..., e.g. radis.rationale_weight=0,0.5,1.")
            if axis.strip() in swept:
                raise UserError(f"--sweep gives the axis {axis.strip()} twice; list all its values in one --sweep.")
            swept.add(axis.strip())
            apply_settings(cfg, {"sweep": {axis.strip(): [v.strip() for v in values.split(",") if v.strip()]}}, "--sweep")
        validate(cfg)
        plan = Plan(cfg, config_file=config, only=only)

        check_against_plan(cfg.analysis, plan)
        if dry_run:
            if launched_processes()[0] == 0:
                print_plan(plan)
            return
        signal.signal(signal.SIGTERM, on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the shell ignores it (`nohup ... &`)
            signal.signal(signal.SIGINT, on_sigint)

        from harness.run.execute import Execution  # here, not at the top: list and --dry-run never import torch

        Execution(plan).run()
        if launched_processes()[1] > 1:
            _end_launched_process()
    except (KeyboardInterrupt, Exception) as err:  # a UserError is an Exception
        # SIGINT reaches here as Ctrl-C only when it is not ignored: a job started in the
        # background by a non-interactive shell (`nohup ... &`) ignores it; stop that with SIGTERM.
        stop = interruption(err)  # also a library error raised while a stop unwound through it
        if stop is not None:
            how, code = ("stopped (SIGTERM)", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
            _fail(f"{how}; finished stages are saved, run the same command again to resume.", code=code)
        if isinstance(err, UserError):
            _fail(str(err))
        raise


run.__signature__ = inspect.Signature(_run_parameters())
run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
app.command(cls=_OneLineCommand)(run)


def _apply_set(cfg, item: str) -> None:
    if "=" not in item:
        raise UserError(f"--set '{item}' must look like key=value, e.g. radis.rationale_weight=0.5.")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) == 2 and parts[0] not in ("budget", "lora", "analysis"):
        # method or suite option: decided by which registry knows the name

        if not registry.is_method(parts[0]) and not registry.is_suite(parts[0]):
            raise UserError(f"--set '{item}': '{parts[0]}' is not a method, a suite, 'budget', 'lora' or 'analysis'.")
        target = "method_options" if registry.is_method(parts[0]) else "suite_options"
        apply_settings(cfg, {target: {parts[0]: {parts[1]: value}}}, "--set")
    elif len(parts) == 2:
        apply_settings(cfg, {parts[0]: {parts[1]: value}}, "--set")
    elif len(parts) == 1:
        configure(cfg, {parts[0]: value}, "--set")
    else:
        raise UserError(f"--set '{item}': use key=value or section.key=value.")


@app.command(cls=_OneLineCommand)
def report(
    run_dirs: List[Path] = typer.Argument(..., readable=False, help="One or more run directories to combine."),
    out: Optional[Path] = typer.Option(None, readable=False, help="Where to write the leaderboard (default: <first run>/report)."),
    title: Optional[str] = typer.Option(None, help="Leaderboard title."),
    general_metric: Optional[str] = typer.Option(None, help="The only y axis of the trade-off plot, e.g. ifeval/prompt_strict or retention/kl."),
    prefix: Optional[List[str]] = typer.Option(
        None, "--prefix",
        help="RUN_DIR=PREFIX: put PREFIX before every row label of that run (repeatable), to keep two runs that hold the "
             "same row computed differently, e.g. --prefix runs/lam05=lam05-."),
) -> None:
    """Render leaderboard.md/csv/html, differences.csv and plots from run directories."""
    try:
        seen: dict[Path, Path] = {}
        for run_dir in run_dirs:
            check_folder(run_dir, "Run directory", "give the --out folder of a run")
            if not (run_dir / "scores.csv").exists():
                raise UserError(f"{run_dir} is not a run directory (no scores.csv); give the --out folder of a run.")
            if run_dir.resolve() in seen:
                same = seen[run_dir.resolve()]
                raise UserError(f"Run directory {run_dir} is given twice{'' if same == run_dir else f' (as {same} too)'}; "
                                "give each run directory once.")
            seen[run_dir.resolve()] = run_dir
        if out is not None:
            check_output_folder(out, "--out", "report folder")
        prefixes = {}
        for item in prefix or []:
            run_dir, eq, text = item.rpartition("=")
            if not eq or not run_dir or not text:
                raise UserError(f"--prefix '{item}' must look like RUN_DIR=PREFIX, e.g. --prefix runs/b=b-.")
            if str(Path(run_dir)) in prefixes:
                raise UserError(f"--prefix names {run_dir} twice; give each run directory one prefix.")
            prefixes[str(Path(run_dir))] = text

        target = out or run_dirs[0] / "report"
        written = render_report(list(run_dirs), target, title=title, general_metric=general_metric, prefixes=prefixes)
        for name, path in written.items():
            typer.echo(f"{name}: {path}")
    except UserError as err:
        _fail(str(err))


@app.command(cls=_OneLineCommand)
def rescore(
    run_dir: Path = typer.Argument(..., readable=False, help="A run directory with saved outputs (outputs/<model>/<suite>.jsonl)."),
    suite: str = typer.Option(..., "--suite", help="The suite to score again, e.g. translation."),
    option: str = typer.Option(..., "--option", help="The suite option to vary, e.g. extraction."),
    values: str = typer.Option(..., "--values", help="Comma-separated values to compare, e.g. first_line,first_paragraph,full."),
    out: Optional[Path] = typer.Option(None, readable=False, help="Where to write the comparison (default: <run>/rescore)."),
) -> None:
    """Score a finished run's saved outputs again under other settings of one suite; generates nothing."""
    try:
        check_folder(run_dir, "Run directory", "give the --out folder of a run")
        check_output_folder(out if out is not None else run_dir / "rescore", "--out", "folder for the comparison")
        written = run_rescore(run_dir, suite, option, [v.strip() for v in values.split(",") if v.strip()], out)
        for name, path in written.items():
            typer.echo(f"{name}: {path}")
    except UserError as err:
        _fail(str(err))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Spinning OpenMP threads slow decoding many-fold when cores are shared. (On an idle
    # machine spinning decoded a batch of 12 ~1.5x faster per step; not measured end to end.)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Library chatter (tokenizer notices, conversion bars) would drown radis-bench's own progress.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        app(standalone_mode=True)
    except SystemExit as exc:
        sys.exit(exc.code)
