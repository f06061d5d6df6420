"""What ``run --dry-run`` prints: every size the run will use, its rows, budget and notes,
the data it lacks, what it would compute and reuse, and the cost estimate of that."""

from __future__ import annotations

from rich.table import Table

from harness.errors import UserError
from harness.progress import console
from harness.run.checks import check_plan, refuse_uncommitted_code
from harness.run.estimate import estimate, trajectory_points
from harness.run.plan import value_text
from harness.run.units import pending_units


def print_plan(plan) -> None:
    """What a dry run prints: every size, the rows, the budget, notes, missing data and the cost estimate."""
    sizes = check_plan(plan, missing_ok=True)
    out = console.__class__()
    b = plan.cfg.budget
    out.print(f"[bold]Model:[/bold] {plan.cfg.model} ({sizes['model']})")
    out.print(f"[bold]Data:[/bold] {sizes['data']}")
    table = Table(title="Translation data (pairs)")
    for col in ("direction", "train available", "train used", "test available", "test used"):
        table.add_column(col, justify="right" if col != "direction" else "left")
    for name, row in sizes["pairs"].items():
        table.add_row(name, f"{row['train_available']:,}", f"{row['train_used']:,}", f"{row['test_available']:,}", f"{row['test_used']:,}")
    for name in sizes.get("missing", {}):
        if name in [d.name for d in plan.directions]:
            table.add_row(name, *["[red]missing[/red]"] * 4)
    out.print(table)
    if sizes["general"]:
        table = Table(title="General-ability data (items)")
        for col in ("set", "available", "used"):
            table.add_column(col)
        for name, row in sizes["general"].items():
            table.add_row(name, f"{row['available']:,}", "by the method" if row["used"] is None else f"{row['used']:,}")
        out.print(table)
    table = Table(title="Methods (rows of the leaderboard)")
    for col in ("label", "method", "own settings", "seeds"):
        table.add_column(col)
    for row in plan.describe_rows():
        own = ", ".join(f"{k}={value_text(v)}" for k, v in row["own_settings"].items()) or "—"
        if row["budget_differs"]:
            own += " [yellow](budget differs from the shared one)[/yellow]"
        table.add_row(row["label"], row["method"], own, ",".join(map(str, row["seeds"])))
    out.print(table)
    seeds = sorted({s for label in plan.entries for s in plan.seeds_of(label)})
    out.print(f"[bold]Methods:[/bold] {', '.join(plan.entries)}   [bold]Seeds:[/bold] {', '.join(map(str, seeds))}")
    out.print(f"[bold]Suites:[/bold] {', '.join(plan.suites)}")
    lora = plan.cfg.lora
    names = {"lora": "LoRA", "rslora": "rsLoRA", "dora": "DoRA", "pissa": "PiSSA-initialised LoRA"}
    adapter = ("full fine-tuning" if lora.adapter == "full"
               else f"{names[lora.adapter]} r={lora.r} alpha={lora.alpha} on {','.join(lora.target_modules)}")
    out.print(
        f"[bold]Shared budget:[/bold] {b.steps} steps x {b.batch_size} examples, lr {b.learning_rate:g} {b.schedule}, "
        f"max length {b.max_length}, equalise {b.equalise}; {adapter}"
    )
    if any(budget.equalise == "compute" for budget in plan.budgets.values()):
        out.print("[bold]Compute budget:[/bold] every row's data building, preparation and training together cost what "
                  f"the baseline's {b.steps} steps cost; a row's steps are set once its data is built (what the original "
                  "generates for it is not known before) and kept in its train_stats.json (schedule_steps, compute_target)",
                  soft_wrap=True)
    if plan.cfg.eval_every:
        points = trajectory_points(plan)
        suites = plan.cfg.trajectory
        out.print(f"[bold]Trajectories:[/bold] checkpoints every {plan.cfg.eval_every} steps: {points} checkpoints x "
                  f"{len(suites)} suites ({', '.join(suites)}) = {points * len(suites)} evaluation units at most "
                  "(those already finished are reused; the estimate below counts them all)", soft_wrap=True)
    out.print(f"[bold]Run directory:[/bold] {plan.run_dir}")
    for note in sizes.get("notes", []):
        out.print(f"[bold]Note:[/bold] {note}", soft_wrap=True)
    if sizes.get("missing"):
        out.print(f"[bold red]Missing data:[/bold red] {', '.join(sizes['missing'])}; a real run stops with:")
        for message in sizes["missing"].values():
            out.print(f"  - {message}", soft_wrap=True)
    if plan.only is not None:
        out.print(f"[bold]Cells (--only):[/bold] {', '.join(plan.only)}")
    status = pending_units(plan)
    refuse_uncommitted_code(plan, status)
    out.print(f"[bold]To compute:[/bold] {_todo_text(status)}", soft_wrap=True)
    if status.get("unversioned"):
        out.print(f"[bold yellow]Warning:[/bold yellow] {status['unversioned']}.", soft_wrap=True)
    out.print("[bold]" + estimate(plan, sizes, status).line().replace(":", ":[/bold]", 1) + (
        " (directions and sets with missing data not counted)" if sizes.get("missing") else "") + (
        "" if status["todo_train"] or status["todo_eval"] else " (nothing to compute)"), soft_wrap=True)
    if sizes.get("missing"):  # printed in full above; the dry run fails where the real run would stop
        raise UserError(f"{plan.data.label} lacks data for {', '.join(sizes['missing'])} (see Missing data above), so a real "
                        "run would stop; add it, or leave those pairs and suites out.")


def _todo_text(status: dict, shown: int = 8) -> str:
    """One line: how many trainings and evaluations a run would compute and reuse, and for which cells."""
    trainings, evaluations = len(status["todo_train"]), sum(len(v) for v in status["todo_eval"].values())
    if not status["known"]:
        return (f"every selected unit is listed ({trainings} trainings, {evaluations} evaluations): which are finished "
                f"cannot be told without the model ({status['why']})")
    if not trainings and not evaluations:
        return (f"nothing: all {status['done_train']} trainings and {status['done_eval']} evaluations are finished "
                "under the current keys and would be reused")
    cells = list(dict.fromkeys(list(status["todo_eval"]) + [f"{label}-seed{seed}" for label, seed in status["todo_train"]]))
    which = ", ".join(cells[:shown]) + (f" and {len(cells) - shown} more" if len(cells) > shown else "")
    return (f"{trainings} trainings and {evaluations} evaluations ({which}); "
            f"{status['done_train']} trainings and {status['done_eval']} evaluations finished, reused")
