"""Rules: one module per rule id, found through a registry, reading the store only.

Each rule module defines ID, TITLE, SEVERITY, WHY (one paragraph) and
`evaluate(conn, run, settings) -> Iterable[Finding]`. The framework, not the rules, applies the
exempt tag, so no rule can forget it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from types import ModuleType
from typing import Any

from sqlalchemy import Connection, select

from finops.config import Settings
from finops.store import schema

SUPPORT_MODULES = {"common", "ptu_pricing"}


@dataclass(frozen=True)
class RunContext:
    run_id: int
    metrics_start: datetime
    metrics_end: datetime
    cost_end: date  # the first day not yet complete (the run's UTC date)
    unmeasured: frozenset[str] = frozenset()  # VMs whose metrics this night could not read
    # metric -> resource id -> its utilisation (None: no data), kept for the night's other rules
    measured: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Finding:
    rule_id: str
    resource_id: str
    severity: str  # high | medium | low
    title: str
    evidence: dict[str, Any]
    monthly_saving: Decimal
    currency: str
    saving_basis: str  # amortized | billed | list-price | none; estimate-* for estimates
    proposed_action: str | None = None
    exempt: bool = field(default=False, compare=False)


@cache
def registry() -> dict[str, ModuleType]:
    """Rule id -> rule module, for every module of this package."""
    rules = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in SUPPORT_MODULES:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if module.ID.replace("-", "_") != info.name:
            raise RuntimeError(f"rule module {info.name} must be named after its id {module.ID}")
        rules[module.ID] = module
    return dict(sorted(rules.items()))


class UnknownRuleError(ValueError):
    pass


def select_rules(ids: Iterable[str] | None) -> list[ModuleType]:
    rules = registry()
    if not ids:
        return list(rules.values())
    unknown = [i for i in ids if i not in rules]
    if unknown:
        raise UnknownRuleError(f"unknown rule id {unknown[0]!r}; known: {', '.join(rules)}")
    return [rules[i] for i in ids]


def _exempt_resources(conn: Connection, run_id: int, settings: Settings) -> set[str]:
    name, value = settings.exempt
    exempt = set()
    for resource_id, tags in conn.execute(
        select(schema.vms.c.resource_id, schema.vms.c.tags).where(schema.vms.c.run_id == run_id)
    ):
        for key, tag_value in (tags or {}).items():
            if key.lower() == name.lower() and str(tag_value).lower() == value.lower():
                exempt.add(resource_id)
    return exempt


def evaluate(
    conn: Connection, run: RunContext, settings: Settings, rule_ids: Iterable[str] | None = None
) -> list[Finding]:
    """Every selected rule's findings, exempt ones marked, sorted by saving (largest first)."""
    exempt = _exempt_resources(conn, run.run_id, settings)
    findings = []
    for rule in select_rules(rule_ids):
        for finding in rule.evaluate(conn, run, settings):
            if finding.resource_id in exempt:
                finding = Finding(**{**finding.__dict__, "exempt": True})
            findings.append(finding)
    findings.sort(key=lambda f: (-f.monthly_saving, f.rule_id, f.resource_id))
    return findings
