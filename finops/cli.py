"""The `finops` command. Exit codes: 0 ok, 1 the job failed, 2 bad usage or configuration,
3 another night holds the lock on this store."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from finops.config import ConfigError, Settings, load_settings
from finops.store.db import StoreError, engine_for, safe_url
from finops.store.lock import LockHeld

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3

app = typer.Typer(
    help="Nightly cost governance for AI infrastructure on Azure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
sim_app = typer.Typer(help="The simulated Azure estate.", no_args_is_help=True)
costs_app = typer.Typer(help="Cost data.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(sim_app, name="sim")
app.add_typer(costs_app, name="costs")
log = logging.getLogger("finops")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (FINOPS_* variables override it)."),
]
SeedOption = Annotated[int, typer.Option(help="Seed of the simulated estate.")]
VmsOption = Annotated[int, typer.Option(min=1, help="Number of VMs in the simulated estate.")]


class UsageError(Exception):
    """The user asked for something that cannot be: one line, exit code 2."""


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"finops: {message}", err=True)
    return typer.Exit(code)


def guarded(command: Callable) -> Callable:
    """Turn expected failures into one line on stderr and a stable exit code."""
    from finops.azure import AzureError, HttpResponseError
    from finops.collection import CostFileError
    from finops.remediate.plan import PlanError
    from finops.report.mail import MailError
    from finops.rules import UnknownRuleError

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ConfigError, UnknownRuleError, UsageError, PlanError, CostFileError) as e:
            raise _fail(str(e), EXIT_USAGE) from None
        except LockHeld as e:
            raise _fail(str(e), EXIT_LOCKED) from None
        except HttpResponseError as e:
            reason = getattr(e.error, "message", None) or e.reason or "error"
            where = e.response.request.url.split("?")[0] if e.response is not None else "Azure"
            raise _fail(
                f"Azure answered {e.status_code} {reason} for {where}", EXIT_FAILED
            ) from None
        except AzureError as e:
            raise _fail(f"Azure call failed: {str(e).splitlines()[0]}", EXIT_FAILED) from None
        except (StoreError, LookupError, ValueError, MailError) as e:
            raise _fail(str(e).splitlines()[0], EXIT_FAILED) from None
        except SQLAlchemyError as e:
            detail = str(getattr(e, "orig", None) or e).splitlines()[0]
            raise _fail(f"database error: {detail}", EXIT_FAILED) from None

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("azure", "apscheduler", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)


def _engine(settings: Settings) -> Engine:
    engine = engine_for(settings.db_url)
    log.info("store %s", safe_url(settings.db_url))
    return engine


def _upgraded_store(settings: Settings) -> Engine:
    """The store with its schema migrated to the newest version (as at every job start)."""
    from finops.store.db import upgrade

    engine = _engine(settings)
    upgrade(engine)
    return engine


SIM_STATE_DIR = Path(".finops-sim")


@contextmanager
def _simulated(settings: Settings, seed: int, vms: int) -> Iterator[tuple[Settings, object]]:
    """The settings pointed at a freshly started simulated estate, whose changes (applied
    plans) persist in .finops-sim/ from one command to the next."""
    from finops.sim.estate import Estate
    from finops.sim.exports import write_focus_export
    from finops.sim.server import SimServer

    state = SIM_STATE_DIR / f"estate-seed{seed}-vms{vms}.json"
    estate = Estate(seed=seed, vms=vms, state_file=state)
    exports = SIM_STATE_DIR / f"exports-seed{seed}-vms{vms}"
    write_focus_export(estate, exports, estate.now.date() - timedelta(days=settings.cost_days))
    with SimServer(estate) as sim:
        azure = settings.azure.model_copy(
            update={
                "arm_endpoint": sim.url,
                "metrics_endpoint": sim.url,
                "prices_endpoint": sim.url,
                "ca_file": Path(sim.ca_file),
                "credential": "simulated",
            }
        )
        costs = settings.costs.model_copy(update={"exports": [str(exports)]})
        log.info("simulated estate (seed %s, %s VMs) at %s", seed, vms, sim.url)
        update = {"azure": azure, "costs": costs, "subscriptions": []}
        yield settings.model_copy(update=update), sim


def _clients(settings: Settings):
    from finops.azure.clients import clients_for

    return clients_for(settings.azure)


def _night(settings: Settings, source: str, with_rules: bool = True, simulation=None):
    from finops.pipeline import nightly

    log.info("store %s", safe_url(settings.db_url))
    return nightly(settings, source, with_rules, simulation)


def _finish(result) -> None:
    """Print the report's path; a partial night is stored and reported, but exits 1."""
    typer.echo(result.report or f"run {result.run_id} collected")
    if result.missing:
        raise _fail(f"night {result.run_id} stored with {result.missing}", EXIT_FAILED)


@app.command()
@guarded
def run(config: ConfigOption = None) -> None:
    """The nightly job against Azure: collect, store, rules, report."""
    _finish(_night(load_settings(config), "azure"))


@app.command()
@guarded
def demo(config: ConfigOption = None, seed: SeedOption = 7, vms: VmsOption = 60) -> None:
    """The whole nightly job against a simulated estate, no Azure account needed."""
    settings = load_settings(config)
    with _simulated(settings, seed, vms) as (simulated, _):
        _finish(_night(simulated, "simulated", simulation={"seed": seed, "vms": vms}))


@app.command()
@guarded
def schedule(config: ConfigOption = None) -> None:
    """Run the nightly job on the configured schedule until SIGTERM or SIGINT."""
    from finops.scheduler import serve

    settings = load_settings(config)

    def night() -> str:
        result = _night(settings, "azure")
        return f"run {result.run_id}, {result.findings} finding(s), report {result.report}"

    serve(settings, night)


@costs_app.command("import")
@guarded
def costs_import(
    location: Annotated[
        str, typer.Argument(help="A FOCUS export file or folder, or a Blob container URL.")
    ],
    config: ConfigOption = None,
) -> None:
    """Load FOCUS cost export files by hand: each file once, a changed file again. One bad
    file and nothing is loaded."""
    from finops.azure import focus
    from finops.store.load import load_cost_file
    from finops.store.lock import night_lock

    settings = load_settings(config)
    engine = _upgraded_store(settings)
    files = focus.find(location, settings.azure)
    if not files:
        raise UsageError(f"no FOCUS export files (.csv, .csv.gz, .parquet) at {location}")
    loaded = []
    with night_lock(engine), engine.begin() as conn:
        for file in files:
            loaded.append((file.location, load_cost_file(conn, file, None)))
    for where, rows in loaded:
        typer.echo(f"unchanged, skipped: {where}" if rows is None else f"{rows} rows: {where}")
    fresh = [rows for _, rows in loaded if rows is not None]
    typer.echo(
        f"{len(fresh)} file(s) loaded ({sum(fresh)} rows), {len(loaded) - len(fresh)} unchanged"
    )


@app.command()
@guarded
def collect(config: ConfigOption = None) -> None:
    """Collect one night from Azure into the store, without rules or report."""
    _finish(_night(load_settings(config), "azure", with_rules=False))


def _latest_run(engine: Engine, statuses: tuple[str, ...]) -> int:
    from finops.store import schema

    with engine.connect() as conn:
        run_id = conn.execute(
            select(schema.runs.c.id)
            .where(schema.runs.c.status.in_(statuses))
            .order_by(schema.runs.c.id.desc())
            .limit(1)
        ).scalar()
    if run_id is None:
        raise UsageError(f"no {' or '.join(statuses)} run in the store; run `finops collect` first")
    return run_id


@app.command()
@guarded
def analyze(
    config: ConfigOption = None,
    rule: Annotated[list[str] | None, typer.Option(help="Only this rule id (repeatable).")] = None,
) -> None:
    """Evaluate the rules on the newest collected night in the store (no Azure calls)."""
    from finops.pipeline import analyze as analyze_run
    from finops.store import schema

    settings = load_settings(config)
    engine = _upgraded_store(settings)
    run_id = _latest_run(engine, ("collected", "succeeded", "partial"))
    with engine.begin() as conn:
        findings = analyze_run(conn, run_id, settings, rule)
        conn.execute(  # a collected night is now analysed; a partial one stays partial
            update(schema.runs)
            .where(schema.runs.c.id == run_id, schema.runs.c.status == "collected")
            .values(status="succeeded")
        )
    for f in findings:
        mark = " (exempt)" if f.exempt else ""
        typer.echo(f"{f.monthly_saving:>12,.2f} {f.currency}  {f.rule_id:32} {f.resource_id}{mark}")
    typer.echo(f"run {run_id}: {len(findings)} finding(s)")


@app.command()
@guarded
def report(
    config: ConfigOption = None,
    send: Annotated[bool, typer.Option("--send", help="Also mail it (mail settings).")] = False,
) -> None:
    """Write the HTML report of the newest analysed night (and mail it); prints its path."""
    from finops.pipeline import mail_report
    from finops.report import produce

    settings = load_settings(config)
    if send and not settings.mail.enabled:
        raise UsageError("--send needs mail settings: set FINOPS_MAIL__SMTP_HOST and recipients")
    engine = _upgraded_store(settings)
    made = produce(engine, settings, _latest_run(engine, ("succeeded", "partial")))
    if send:
        mail_report(made, settings)
    typer.echo(made.path)


@app.command()
@guarded
def plan(
    config: ConfigOption = None,
    rule: Annotated[list[str] | None, typer.Option(help="Only this rule id (repeatable).")] = None,
    subscription: Annotated[
        list[str] | None, typer.Option(help="Only this subscription id (repeatable).")
    ] = None,
    min_saving: Annotated[
        str | None, typer.Option(help="Only findings saving at least this much a month.")
    ] = None,
) -> None:
    """Turn the newest night's open findings into a plan for review. Changes nothing in Azure."""
    from decimal import Decimal, InvalidOperation

    from finops.remediate.plan import make_plan, plan_savings, save_plan
    from finops.rules import select_rules

    settings = load_settings(config)
    select_rules(rule)  # unknown ids are a usage error
    try:
        minimum = None if min_saving is None else Decimal(min_saving)
    except InvalidOperation:
        raise UsageError(f"--min-saving must be an amount, not {min_saving!r}") from None
    engine = _upgraded_store(settings)
    with engine.begin() as conn:
        new_plan = make_plan(conn, settings, rule, subscription, minimum)
        path = save_plan(conn, settings, new_plan)
    rows = [
        (
            a["kind"],
            a["resource_id"].rsplit("/", 1)[-1],
            a["finding"]["rule_id"],
            f"{a['currency']} {Decimal(a['monthly_saving']):,.2f}",
        )
        for a in new_plan["actions"]
    ]
    _table(("action", "resource", "why", "saving/month"), rows)
    totals = ", ".join(f"{c} {v:,.2f}" for c, v in plan_savings(new_plan).items()) or "nothing"
    typer.echo(f"\n{len(rows)} action(s), {totals} a month. Nothing was changed in Azure.")
    typer.echo(f"Review, then: finops apply {path}")
    typer.echo(path)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@app.command()
@guarded
def apply(
    plan_file: Annotated[Path, typer.Argument(help="A plan written by `finops plan`.")],
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Apply without asking.")] = False,
    max_actions: Annotated[
        int | None, typer.Option(min=1, help="Allow a plan this large (default: the cap).")
    ] = None,
) -> None:
    """Carry out exactly the actions of one plan, re-checking each resource's live state."""
    from finops.remediate.apply import Applier, read_plan, verify

    settings = load_settings(config)
    the_plan = read_plan(plan_file)
    engine = _upgraded_store(settings)
    verify(engine, the_plan, settings, max_actions or settings.remediation.max_actions)
    rows = [
        (str(a["index"]), a["kind"], a["resource_id"].rsplit("/", 1)[-1], a["finding"]["rule_id"])
        for a in the_plan["actions"]
    ]
    _table(("#", "action", "resource", "why"), rows)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to apply without --yes in a non-interactive run")
        if not typer.confirm(f"Apply these {len(rows)} action(s)?"):
            raise UsageError("not applied")
    target = the_plan["target"]
    if target["kind"] == "simulated":
        with _simulated(settings, target["seed"], target["vms"]) as (simulated, _):
            outcomes = _apply(engine, simulated, the_plan, Applier)
    else:
        outcomes = _apply(engine, settings, the_plan, Applier)
    for o in outcomes:
        typer.echo(
            f"{o.index:>3} {o.outcome:9} {o.kind:20} {o.resource_id.rsplit('/', 1)[-1]}: {o.reason}"
        )
    counts = {
        k: sum(o.outcome == k for o in outcomes) for k in ("succeeded", "noop", "skipped", "failed")
    }
    typer.echo(", ".join(f"{v} {k}" for k, v in counts.items()))
    if counts["failed"]:
        raise typer.Exit(EXIT_FAILED)


def _apply(engine: Engine, settings: Settings, the_plan: dict, applier_class) -> list:
    clients = _clients(settings)
    actor = clients.actor()
    log.info("applying plan %s as %s", the_plan["plan_id"], actor)
    return applier_class(engine, clients, settings, actor).apply(the_plan)


@app.command()
@guarded
def audit(
    config: ConfigOption = None,
    plan_id: Annotated[str | None, typer.Option("--plan", help="Only this plan id.")] = None,
) -> None:
    """List what apply did: when, who, which action on which resource, and the outcome."""
    from finops.store import schema

    settings = load_settings(config)
    engine = _upgraded_store(settings)
    query = select(schema.audit).order_by(schema.audit.c.id)
    if plan_id:
        query = query.where(schema.audit.c.plan_id.startswith(plan_id))
    with engine.connect() as conn:
        rows = [
            (
                r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.plan_id[:8],
                r.actor,
                r.kind,
                r.resource_id.rsplit("/", 1)[-1],
                r.outcome,
                r.error or r.reason or "",
            )
            for r in conn.execute(query)
        ]
    if not rows:
        typer.echo("no actions audited" + (f" for plan {plan_id}" if plan_id else ""))
        return
    _table(("when (UTC)", "plan", "who", "action", "resource", "outcome", "detail"), rows)


@app.command()
@guarded
def runs(
    config: ConfigOption = None,
    last: Annotated[int, typer.Option(min=1, help="How many nights to list.")] = 20,
) -> None:
    """List the nights: start, duration, status, rows per source, findings, saving, error."""
    from decimal import Decimal

    from finops.report.build import fmt_totals, savings_by_currency
    from finops.store import schema

    settings = load_settings(config)
    engine = _upgraded_store(settings)
    table, findings = schema.runs, schema.findings
    with engine.connect() as conn:
        nights = conn.execute(select(table).order_by(table.c.id.desc()).limit(last)).all()
        rows = []
        for r in nights:
            active = [
                {
                    "resource_id": f.resource_id,
                    "currency": f.currency,
                    "monthly_saving": Decimal(str(f.monthly_saving)),
                }
                for f in conn.execute(
                    select(findings).where(findings.c.run_id == r.id, findings.c.exempt.is_(False))
                )
            ]
            took = (
                f"{(r.finished_at - r.started_at).total_seconds():.0f}s" if r.finished_at else "-"
            )
            counts = r.counts or {}
            sources = " ".join(
                f"{k}={counts[k]}" for k in ("vms", "metrics", "costs") if k in counts
            )
            rows.append(
                (
                    str(r.id),
                    r.started_at.strftime("%Y-%m-%d %H:%M"),
                    took,
                    r.status,
                    r.source,
                    sources or "-",
                    str(len(active)),
                    fmt_totals(savings_by_currency(active)) or "-",
                    r.error or "",
                )
            )
    if not rows:
        typer.echo("no nights in the store yet")
        return
    _table(
        (
            "run",
            "started (UTC)",
            "took",
            "status",
            "source",
            "rows",
            "findings",
            "saving/month",
            "error",
        ),
        rows,
    )


@app.command("settings")
def settings_reference() -> None:
    """Print every setting with its variable and default, as docs/configuration.md lists them."""
    from finops.config import reference_markdown

    typer.echo(reference_markdown(), nl=False)


@db_app.command("upgrade")
@guarded
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the store's schema to the newest version."""
    settings = load_settings(config)
    _upgraded_store(settings)
    typer.echo(f"schema up to date in {safe_url(settings.db_url)}")


@sim_app.command("serve")
@guarded
def sim_serve(
    seed: SeedOption = 7,
    vms: VmsOption = 60,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 0,
) -> None:
    """Serve the simulated estate in the foreground, to try the SDKs or `finops run` by hand."""
    from finops.sim.estate import Estate
    from finops.sim.server import SimServer

    sim = SimServer(Estate(seed=seed, vms=vms), port=port)
    typer.echo(f"simulated Azure estate at {sim.url}\nCA file: {sim.ca_file}\n")
    typer.echo("Point finops at it with:")
    for name, value in (
        ("ARM_ENDPOINT", sim.url),
        ("METRICS_ENDPOINT", sim.url),
        ("PRICES_ENDPOINT", sim.url),
        ("CA_FILE", sim.ca_file),
        ("CREDENTIAL", "simulated"),
    ):
        typer.echo(f"  export FINOPS_AZURE__{name}={value}")
    typer.echo("Ctrl-C stops it.")
    try:
        sim.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


def main() -> None:
    app()
