"""gpu-vm-missing-tags: a GPU VM without the tags that say whose it is and who pays."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from sqlalchemy import Connection, select

from finops.config import Settings
from finops.rules import Finding, RunContext
from finops.rules.common import gpu_vms
from finops.store import schema

ID = "gpu-vm-missing-tags"
TITLE = "GPU VM missing required tags"
SEVERITY = "low"
KIND = "hygiene"
WHY = (
    "Untagged GPU spend has no owner: nobody is asked about it and no team sees it in its "
    "bill. Where the VM's resource group carries the missing tags, merging them is the fix; "
    "otherwise someone has to say whose the VM is."
)
THRESHOLDS = ("required_tags",)


def _value(tags: dict, name: str) -> str | None:
    for key, value in (tags or {}).items():
        if key.lower() == name.lower() and str(value).strip():
            return str(value)
    return None


def evaluate(conn: Connection, run: RunContext, settings: Settings) -> Iterator[Finding]:
    groups = schema.resource_groups
    group_tags = {
        (r.subscription_id, r.name): r.tags or {}
        for r in conn.execute(select(groups).where(groups.c.run_id == run.run_id))
    }
    required = settings.rules.required_tags
    for vm in gpu_vms(conn, run, ["running", "stopped", "deallocated", "starting", "unknown"]):
        missing = [t for t in required if _value(vm["tags"], t) is None]
        if not missing:
            continue
        inherited = group_tags.get((vm["subscription_id"], vm["resource_group"].lower()), {})
        merge = {t: v for t in missing if (v := _value(inherited, t)) is not None}
        still = [t for t in missing if t not in merge]
        evidence: dict = {"missing": missing}
        if merge:
            evidence["tags_to_merge"] = merge
        if still:
            evidence["nobody_can_tell"] = still
        yield Finding(
            rule_id=ID,
            resource_id=vm["resource_id"],
            severity=SEVERITY,
            title=f"{vm['name']} has no {', '.join(missing)} tag"
            + ("" if len(missing) == 1 else "s"),
            evidence=evidence,
            monthly_saving=Decimal(0),
            currency=settings.currency,
            saving_basis="none",
            proposed_action="merge-tags" if merge else None,
        )
