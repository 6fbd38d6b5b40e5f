"""Each rule on hand-built store rows, with the near-misses at its thresholds."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from finops import rules
from finops.collection import Collection, Spool
from finops.config import load_settings
from finops.pipeline import run_context, start_run
from finops.store import schema
from finops.store.db import engine_for, upgrade
from finops.store.load import load_night

NOW = datetime(2026, 11, 20, 12, 0)
SUB = "11111111-2222-4333-8444-555555555555"
A100 = "Standard_NC24ads_A100_v4"  # 3.673 USD/h list
SIZES = [
    {
        "size": A100,
        "vcpus": 24,
        "memory_gb": 220.0,
        "gpus": Decimal(1),
        "gpu_model": "A100 PCIe",
        "gpu_memory_gb": 80,
        "family": "StandardNCADSA100v4Family",
    },
    {
        "size": "Standard_D4s_v5",
        "vcpus": 4,
        "memory_gb": 16.0,
        "gpus": Decimal(0),
        "gpu_model": None,
        "gpu_memory_gb": None,
        "family": "standardDSv5Family",
    },
]


def rid(name: str) -> str:
    return (
        f"/subscriptions/{SUB}/resourcegroups/rg/providers/microsoft.compute/virtualmachines/{name}"
    )


class Night:
    """A night built by hand: VMs, hourly metrics, daily costs, schedules."""

    def __init__(self):
        self.c = Collection(
            metrics_start=NOW - timedelta(days=7),
            metrics_end=NOW,
            cost_start=NOW.date() - timedelta(days=30),
            cost_end=NOW.date(),
            subscriptions=[{"subscription_id": SUB, "display_name": "test"}],
            vm_sizes=SIZES,
        )
        # as the collector fetched them: the store replaces these windows on each load
        self.c.cost_windows = [
            (SUB, cost_type, self.c.cost_start, self.c.cost_end)
            for cost_type in ("ActualCost", "AmortizedCost")
        ]

    def vm(
        self,
        name,
        size=A100,
        state="running",
        tags=None,
        gpu=None,
        cpu=None,
        gpu_memory=None,  # MiB per GPU: (average, maximum)
        hours=168,
        daily_cost=None,
        schedule=None,
        priority="Regular",
        os_type="Linux",
    ):
        self.c.vms.append(
            {
                "resource_id": rid(name),
                "name": name,
                "subscription_id": SUB,
                "resource_group": "rg",
                "location": "eastus",
                "size": size,
                "power_state": state,
                "os_type": os_type,
                "priority": priority,
                "tags": tags or {},
            }
        )
        for metric, value in (("gpu", gpu), ("cpu", cpu), ("gpu_memory", gpu_memory)):
            if value is None:
                continue
            average, maximum = value
            for h in range(hours):
                self.c.metrics.append(
                    {
                        "resource_id": rid(name),
                        "metric": metric,
                        "ts": NOW - timedelta(hours=h + 1),
                        "average": average,
                        "maximum": maximum,
                    }
                )
        if daily_cost is not None:
            for d in range(1, 8):
                self.cost(name, d, daily_cost)
        if schedule:
            self.c.schedules.append(
                {
                    "resource_id": rid(name),
                    "schedule_id": f"{rid(name)}-schedule",
                    "status": schedule,
                    "daily_time": "1900",
                    "time_zone": "UTC",
                }
            )
        return self

    def cost(self, name, days_ago, amount, cost_type="ActualCost", currency="EUR", resource=None):
        """One day's compute cost of a VM (or of another resource, storage meter), as the
        Query API collector stores it."""
        self.c.costs.append(
            {
                "source": "query",
                "file_id": 0,
                "resource_id": resource or rid(name),
                "usage_date": NOW.date() - timedelta(days=days_ago),
                "cost_type": cost_type,
                "meter_category": "Storage" if resource else "Virtual Machines",
                "subscription_id": SUB,
                "resource_group": "rg",
                "cost": Decimal(amount),
                "currency": currency,
            }
        )
        return self

    def price(self, offer, per_hour, size=A100, os="linux"):
        self.c.vm_prices.append(
            {
                "location": "eastus",
                "size": size,
                "offer": offer,
                "os": "any" if offer.startswith("reservation") else os,
                "per_hour": Decimal(per_hour),
                "currency": "USD",
            }
        )
        return self

    def disk(self, name, state, days, vm=None, daily_cost=None, size_gb=1024):
        """A managed disk in `state` since `days` ago, attached to VM `vm` if given."""
        disk_id = rid(name).replace("virtualmachines", "disks")
        self.c.disks.append(
            {
                "resource_id": disk_id,
                "name": name,
                "subscription_id": SUB,
                "resource_group": "rg",
                "location": "eastus",
                "sku": "Premium_LRS",
                "size_gb": size_gb,
                "state": state,
                "managed_by": rid(vm) if vm else None,
                "owner_changed": NOW - timedelta(days=days),
                "tags": {},
            }
        )
        for d in range(1, 8) if daily_cost else ():
            self.cost(name, d, daily_cost, resource=disk_id)
        return self

    def store(self, engine) -> int:
        """Load the night as a run; its id."""
        upgrade(engine)
        run_id = start_run(engine, "test", NOW)
        with engine.begin() as conn:
            load_night(conn, run_id, self.c)
            conn.execute(
                rules.schema.runs.update()
                .where(rules.schema.runs.c.id == run_id)
                .values(
                    metrics_start=self.c.metrics_start,
                    metrics_end=self.c.metrics_end,
                    cost_end=self.c.cost_end,
                )
            )
        return run_id

    def evaluate(self, db_url: str, **settings) -> dict[tuple[str, str], rules.Finding]:
        engine = engine_for(db_url)
        run_id = self.store(engine)
        with engine.connect() as conn:
            found = rules.evaluate(conn, run_context(conn, run_id), load_settings(**settings))
        engine.dispose()
        return {(f.rule_id, f.resource_id.rsplit("/", 1)[1]): f for f in found}


IDLE, NO_SHUTDOWN, STOPPED = (
    "idle-gpu-vm",
    "gpu-vm-no-auto-shutdown",
    "gpu-vm-stopped-not-deallocated",
)


def flagged(found, rule: str) -> set[str]:
    return {name for (r, name), f in found.items() if r == rule and not f.exempt}


def test_idle_gpu_vm_thresholds_and_near_misses(db_url):
    night = Night()
    night.vm("idle", gpu=(1.0, 3.0), schedule="Enabled")
    night.vm("avg-at-threshold", gpu=(5.0, 6.0), schedule="Enabled")
    night.vm("p95-at-threshold", gpu=(4.9, 10.0), schedule="Enabled")
    night.vm("just-under", gpu=(4.9, 9.9), schedule="Enabled")
    night.vm("cpu-fallback", cpu=(4.9, 8.0), schedule="Enabled")
    night.vm("cpu-at-threshold", cpu=(5.0, 8.0), schedule="Enabled")
    night.vm("too-little-data", gpu=(1.0, 2.0), hours=23, schedule="Enabled")
    night.vm("just-enough-data", gpu=(1.0, 2.0), hours=24, schedule="Enabled")
    night.vm("deallocated", state="deallocated", gpu=(1.0, 2.0), schedule="Enabled")
    night.vm("cpu-vm", size="Standard_D4s_v5", cpu=(0.5, 1.0), schedule="Enabled")
    found = night.evaluate(db_url)
    assert flagged(found, IDLE) == {"idle", "just-under", "cpu-fallback", "just-enough-data"}
    fallback = found[(IDLE, "cpu-fallback")].evidence
    assert fallback["gpu_telemetry"] == "missing" and fallback["signal"] == "cpu"
    idle = found[(IDLE, "idle")]
    assert idle.evidence["gpu_avg_percent"] == 1.0 and idle.evidence["hours_with_data"] == 168
    assert idle.proposed_action == "deallocate"


def test_idle_thresholds_come_from_settings(db_url):
    night = Night().vm("gpu6", gpu=(6.0, 7.0), schedule="Enabled")
    assert not flagged(night.evaluate(db_url), IDLE)
    assert flagged(night.evaluate(db_url, rules={"idle_gpu_avg_percent": 7}), IDLE) == {"gpu6"}


def test_saving_uses_billed_cost_else_list_price(db_url):
    night = Night()
    night.vm("billed", gpu=(1.0, 2.0), daily_cost="50.000000", schedule="Enabled")
    night.vm("unbilled", gpu=(1.0, 2.0), schedule="Enabled")
    found = night.evaluate(db_url)
    billed = found[(IDLE, "billed")]
    assert billed.saving_basis == "billed" and billed.currency == "EUR"
    assert billed.monthly_saving == Decimal("1520.83")  # 50 x 730 / 24
    unbilled = found[(IDLE, "unbilled")]
    assert unbilled.saving_basis == "list-price" and unbilled.currency == "USD"
    assert unbilled.monthly_saving == Decimal("2681.29")  # 3.673 x 730


def test_no_auto_shutdown(db_url):
    night = Night()
    night.vm("none", gpu=(60.0, 90.0), daily_cost="24.000000")
    night.vm("disabled", gpu=(60.0, 90.0), schedule="Disabled")
    night.vm("enabled", gpu=(60.0, 90.0), schedule="Enabled")
    night.vm("stopped", state="stopped")
    night.vm("cpu-vm", size="Standard_D4s_v5", cpu=(50.0, 60.0))
    found = night.evaluate(db_url)
    assert flagged(found, NO_SHUTDOWN) == {"none", "disabled"}
    finding = found[(NO_SHUTDOWN, "none")]
    # 730 h a month at 1 EUR/h; 108 of 168 weekly hours fall outside 08:00-20:00 Mon-Fri
    assert finding.monthly_saving == Decimal("469.29")
    assert finding.saving_basis == "estimate-billed"
    assert finding.proposed_action == "create-auto-shutdown"
    seven_days = night.evaluate(
        db_url, rules={"working_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}
    )
    assert seven_days[(NO_SHUTDOWN, "none")].monthly_saving == Decimal("365.00")


def test_stopped_not_deallocated(db_url):
    night = Night()
    night.vm("stopped", state="stopped", daily_cost="88.152000")
    night.vm("deallocated", state="deallocated")
    night.vm("cpu-stopped", size="Standard_D4s_v5", state="stopped")
    found = night.evaluate(db_url)
    assert flagged(found, STOPPED) == {"stopped"}
    assert found[(STOPPED, "stopped")].monthly_saving == Decimal("2681.29")


def test_exempt_tag_marks_findings_exempt(db_url):
    night = Night()
    night.vm("exempt", gpu=(1.0, 2.0), tags={"FinOps-Exempt": "TRUE"})
    night.vm("not-exempt", gpu=(1.0, 2.0), tags={"finops-exempt": "false"}, schedule="Enabled")
    found = night.evaluate(db_url)
    assert found[(IDLE, "exempt")].exempt and found[(NO_SHUTDOWN, "exempt")].exempt
    assert flagged(found, IDLE) == {"not-exempt"}
    other = night.evaluate(db_url, exempt_tag="keep=yes")
    assert not other[(IDLE, "exempt")].exempt


def test_unknown_rule_id_is_refused():
    with pytest.raises(rules.UnknownRuleError, match="no-such-rule"):
        rules.select_rules(["no-such-rule"])


def test_every_rule_has_its_metadata():
    for rule_id, module in rules.registry().items():
        assert rule_id == module.ID
        assert module.TITLE and module.WHY and module.SEVERITY in ("high", "medium", "low")
        for name in module.THRESHOLDS:  # a setting of [rules], or a dotted one elsewhere
            where = load_settings() if "." in name else load_settings().rules
            for part in name.split("."):
                where = getattr(where, part)


def test_metrics_outside_the_window_are_ignored(sqlite_url):
    night = Night().vm("old-idle", gpu=(1.0, 2.0), schedule="Enabled")
    night.c.metrics = Spool({**row, "ts": row["ts"] - timedelta(days=8)} for row in night.c.metrics)
    assert {rule for rule, _ in night.evaluate(sqlite_url)} == {MISSING}  # untagged, nothing more


def test_headline_leads_with_the_configured_currency_and_counts_each_vm_once():
    from finops.report.build import headline

    def finding(rule, vm, amount, currency="USD", sub="research", new=False):
        return {
            "new": new,
            "rule_id": rule,
            "resource_id": vm,
            "monthly_saving": Decimal(amount),
            "currency": currency,
            "subscription": sub,
        }

    findings = [
        finding(IDLE, "a", "1000.00", new=True),
        finding(NO_SHUTDOWN, "a", "643.00"),  # the same VM: counted once, at its largest
        finding(STOPPED, "b", "500.00", sub="prod"),
        finding(IDLE, "c", "90.00", currency="EUR"),
    ]
    titles = {IDLE: "Idle GPU VM"}
    line = headline(findings, titles, "USD")
    assert line.startswith(
        "USD 1,500.00 a month can be saved on 2 GPU VMs (USD 1,000.00 of it new tonight); "
        "most from Idle GPU"
    )
    assert "(USD 1,000.00)" in line and "67 % of it in subscription research" in line
    assert line.endswith("Also EUR 90.00 in other currencies.")
    assert headline(findings, titles, "EUR").startswith(
        "EUR 90.00 a month can be saved on 1 GPU VM (none of it new tonight)"
    )
    assert headline([], titles, "USD").startswith("No savings found tonight")


def test_saving_uses_amortized_cost_where_a_reservation_covers_the_vm(db_url):
    night = Night()
    night.vm("reserved", state="stopped")
    night.vm("payg", state="stopped")
    for d in range(1, 8):
        night.cost("reserved", d, "0", "ActualCost")  # usage covered: billed at nothing
        night.cost("reserved", d, "55.536000", "AmortizedCost")  # 63 % of 88.152
        night.cost("payg", d, "88.152000", "ActualCost")
        night.cost("payg", d, "88.152000", "AmortizedCost")
    found = night.evaluate(db_url)
    reserved = found[(STOPPED, "reserved")]
    assert reserved.saving_basis == "amortized"
    assert reserved.monthly_saving == Decimal("1689.22")  # 55.536 x 730 / 24
    assert "reservation" in reserved.evidence["cost_detail"]
    payg = found[(STOPPED, "payg")]
    assert payg.saving_basis == "billed" and payg.monthly_saving == Decimal("2681.29")


ANOMALY = "gpu-cost-anomaly"


def _spend_history(night, name, usual, yesterday, days=15):
    night.vm(name, gpu=(60.0, 90.0), schedule="Enabled")
    for d in range(2, days + 1):
        night.cost(name, d, usual, "AmortizedCost")
    night.cost(name, 1, yesterday, "AmortizedCost")


def test_gpu_cost_anomaly_fires_above_both_thresholds_only(db_url):
    night = Night()
    # the resource group's usual day: 1,000; yesterday 1,000 + 600 (60 %, over 500): fires
    _spend_history(night, "steady", "1000", "1000")
    _spend_history(night, "jumped", "0", "600.01")
    found = night.evaluate(db_url)
    finding = found[(ANOMALY, "rg")]  # keyed by the last segment of the resource id
    assert finding.resource_id == f"/subscriptions/{SUB}/resourcegroups/rg"
    assert finding.monthly_saving == 0 and finding.saving_basis == "none"
    evidence = finding.evidence
    assert evidence["spend"] == "1600.01" and evidence["baseline_median"] == "1000.00"
    assert evidence["excess"] == "600.01" and evidence["day"] == str(NOW.date() - timedelta(1))
    assert [d["resource_id"] for d in evidence["drivers"]] == [rid("jumped")]
    assert evidence["monthly_at_stake"] == "18250.30"  # 600.01 x 730 / 24
    # one finding: the subscription's jump is the same money
    assert [k for k in found if k[0] == ANOMALY] == [(ANOMALY, "rg")]


@pytest.mark.parametrize(
    ("usual", "yesterday", "why"),
    [
        ("1000", "1500", "exactly +50 %: not above the threshold"),
        ("2000", "2900", "+900 is only 45 %"),
        ("600", "1099", "+83 % but +499 is under 500"),
    ],
)
def test_gpu_cost_anomaly_near_misses(db_url, usual, yesterday, why):
    night = Night()
    _spend_history(night, "vm", usual, yesterday)
    assert not [k for k in night.evaluate(db_url) if k[0] == ANOMALY], why


def test_gpu_cost_anomaly_thresholds_come_from_settings(db_url):
    night = Night()
    _spend_history(night, "vm", "1000", "1400")
    tuned = night.evaluate(db_url, rules={"anomaly_percent": 30, "anomaly_min_amount": 300})
    assert [k for k in tuned if k[0] == ANOMALY]


QUOTA = "gpu-quota-near-limit"


def test_gpu_quota_near_limit_where_gpu_vms_run(db_url):
    night = Night()
    night.vm("a100", gpu=(60.0, 90.0), schedule="Enabled")  # a GPU VM running in eastus

    def quota(family, used, limit, location="eastus"):
        night.c.quotas.append(
            {
                "subscription_id": SUB,
                "location": location,
                "family": family,
                "display_name": f"{family} vCPUs",
                "current_value": used,
                "limit": limit,
            }
        )

    quota("StandardNCADSA100v4Family", 80, 100)  # 80 %: at the threshold, named
    quota("standardNDSH100v5Family", 79, 100)  # 79 %: not
    quota("standard NCASv3_T4 Family", 95, 100)  # GPU family, spelled with spaces: named
    quota("standardDSv5Family", 99, 100)  # not a GPU family
    quota("standardNDASv4_A100Family", 96, 100, location="westeurope")  # no GPU VM runs there
    found = night.evaluate(db_url)
    named = {name for rule, name in found if rule == QUOTA}
    assert named == {"standardncadsa100v4family", "standard ncasv3_t4 family"}
    f = found[(QUOTA, "standardncadsa100v4family")]
    assert f.monthly_saving == 0 and f.evidence["percent_used"] == "80.0"
    assert f.evidence["gpu_vms_in_region"] == 1
    tuned = night.evaluate(db_url, rules={"quota_near_percent": 90})
    assert {name for rule, name in tuned if rule == QUOTA} == {"standard ncasv3_t4 family"}


MISSING = "gpu-vm-missing-tags"


def test_gpu_vm_missing_tags_merges_what_the_resource_group_carries(db_url):
    night = Night()
    full = {"Owner": "dana", "cost-center": "cc-1", "environment": "prod"}  # any case
    night.vm("tagged", gpu=(60.0, 90.0), schedule="Enabled", tags=full)
    night.vm("bare", gpu=(60.0, 90.0), schedule="Enabled")
    night.vm("blank-owner", state="deallocated", tags={**full, "Owner": " "})
    night.vm("cpu-vm", size="Standard_D4s_v5", cpu=(50.0, 60.0))
    night.c.resource_groups.append(
        {"subscription_id": SUB, "name": "rg", "tags": {"owner": "lee", "Cost-Center": "cc-9"}}
    )
    found = night.evaluate(db_url)
    assert {name for rule, name in found if rule == MISSING} == {"bare", "blank-owner"}
    bare = found[(MISSING, "bare")]
    assert bare.evidence["missing"] == ["owner", "cost-center", "environment"]
    assert bare.evidence["tags_to_merge"] == {"owner": "lee", "cost-center": "cc-9"}
    assert bare.evidence["nobody_can_tell"] == ["environment"]
    assert bare.proposed_action == "merge-tags" and bare.monthly_saving == 0
    assert found[(MISSING, "blank-owner")].evidence["tags_to_merge"] == {"owner": "lee"}
    only_owner = night.evaluate(db_url, rules={"required_tags": ["owner"]})
    assert {name for rule, name in only_owner if rule == MISSING} == {"bare", "blank-owner"}
    team = night.evaluate(db_url, rules={"required_tags": ["team"]})
    assert found[(MISSING, "bare")].proposed_action == "merge-tags"
    assert team[(MISSING, "tagged")].proposed_action is None  # nobody carries `team`


OVERSIZED = "gpu-vm-oversized"
A100_FAMILY = [
    {**SIZES[0], "size": size, "vcpus": 24 * n, "gpus": Decimal(n)}
    for size, n in (("Standard_NC48ads_A100_v4", 2), ("Standard_NC96ads_A100_v4", 4))
]


def test_gpu_vm_oversized_proposes_the_smaller_size_that_carries_the_work(db_url):
    night = Night()
    night.c.vm_sizes = SIZES + A100_FAMILY
    two = "Standard_NC48ads_A100_v4"  # 7.346 USD/h list, 2 x 80 GB
    # 20 GB of 80 at peak (25 %): 2 x 20 x 1.25 = 50 GB fits one A100; GPU p95 35 % x 2 = 70 %
    night.vm(
        "half", size=two, gpu=(25.0, 35.0), gpu_memory=(15_000.0, 20_480.0), daily_cost="176.304"
    )
    night.vm("mem-50", size=two, gpu=(25.0, 35.0), gpu_memory=(30_000.0, 40_960.0))  # 50 %
    night.vm("busy-41", size=two, gpu=(30.0, 41.0), gpu_memory=(15_000.0, 20_480.0))  # 82 % on 1
    night.vm("gpu-61", size=two, gpu=(40.0, 61.0), gpu_memory=(15_000.0, 20_480.0))
    night.vm("idle", size=two, gpu=(1.0, 2.0), gpu_memory=(15_000.0, 20_480.0))
    night.vm("one-gpu", gpu=(25.0, 35.0), gpu_memory=(15_000.0, 20_480.0))  # nothing smaller
    # 4 A100s, 40 % busy: 1.6 GPUs of work fits two at 80 %; 4 x 25 GB x 1.25 = 125 of 160 GB
    night.vm(
        "four",
        size="Standard_NC96ads_A100_v4",
        gpu=(30.0, 40.0),
        gpu_memory=(20_000.0, 25_600.0),
    )
    found = night.evaluate(db_url)
    assert {name for rule, name in found if rule == OVERSIZED} == {"half", "four"}
    half = found[(OVERSIZED, "half")]
    e = half.evidence
    assert e["proposed_size"] == A100 and e["gpu_memory_p95_gb"] == "20.0"
    assert e["vram_needed_gb"] == "50.0" and e["proposed_gpu_p95_percent"] == "70.0"
    # billed 176.304 a day = 5,362.58 a month; the smaller size lists at 3.673 / 7.346 = half
    assert half.monthly_saving == Decimal("2681.29") and half.saving_basis == "billed"
    assert half.proposed_action == "resize" and half.currency == "EUR"
    four = found[(OVERSIZED, "four")]
    assert four.evidence["proposed_size"] == "Standard_NC48ads_A100_v4"
    assert four.monthly_saving == Decimal("5362.58")  # list price 14.692 -> 7.346, x 730
    assert four.saving_basis == "list-price"
    roomy = night.evaluate(db_url, rules={"oversized_headroom_percent": 70})
    assert (OVERSIZED, "half") in roomy and (OVERSIZED, "four") not in roomy  # 170 GB > 160


COMMITMENT = "gpu-vm-commitment-candidate"


def test_gpu_vm_commitment_candidate_prices_reservations_for_always_on_vms(db_url):
    night = Night()
    night.price("payg", "3.673").price("payg", "4.777", os="windows")
    night.price("reservation-1y", "2.27726").price("reservation-3y", "1.4692")
    busy = {"gpu": (60.0, 90.0), "schedule": "Enabled"}
    night.vm("always", **busy)
    night.vm("windows", os_type="Windows", **busy)
    night.vm("reserved", **busy)
    night.vm("most-days", **busy)
    night.vm("idle", gpu=(1.0, 2.0), schedule="Enabled")
    night.vm("spot", priority="Spot", **busy)
    night.vm("no-price", size="Standard_NC48ads_A100_v4", **busy)
    night.c.vm_sizes = SIZES + A100_FAMILY
    for d in range(1, 31):
        for name in ("always", "idle", "spot"):
            night.cost(name, d, "88.152000").cost(name, d, "88.152000", "AmortizedCost")
        night.cost("no-price", d, "176.304000").cost("no-price", d, "176.304000", "AmortizedCost")
        night.cost("windows", d, "114.648000").cost("windows", d, "114.648000", "AmortizedCost")
        night.cost("reserved", d, "0").cost("reserved", d, "55.536000", "AmortizedCost")
        if d > 2:  # 28 of the 30 days: 93.3 %
            night.cost("most-days", d, "88.152000")
            night.cost("most-days", d, "88.152000", "AmortizedCost")
    found = night.evaluate(db_url)
    assert {name for rule, name in found if rule == COMMITMENT} == {"always", "windows"}
    always = found[(COMMITMENT, "always")]
    # 88.152 a day x 730 / 24 = 2,681.29 a month; 1 year: (3.673 - 2.27726) / 3.673 = 38 % off
    assert always.monthly_saving == Decimal("1018.89") and always.saving_basis == "billed"
    assert always.evidence["saving_3y"] == "1608.77"  # 60 % off
    assert always.evidence["running_percent"] == "100.00"
    assert always.currency == "EUR" and always.proposed_action == "buy-reservation"
    # Windows pays its licence by the hour either way: the same compute saving, 1,018.89
    assert found[(COMMITMENT, "windows")].monthly_saving == Decimal("1018.89")
    looser = night.evaluate(db_url, rules={"commitment_running_percent": 90})
    assert {name for rule, name in looser if rule == COMMITMENT} == {
        "always",
        "windows",
        "most-days",
    }


SPOT = "gpu-vm-spot-candidate"


def test_gpu_vm_spot_candidate_for_interruptible_work_on_regular_priority(db_url):
    night = Night()
    night.price("payg", "3.673").price("spot", "1.1019")
    busy = {"gpu": (60.0, 90.0), "schedule": "Enabled", "daily_cost": "88.152"}
    night.vm("train", tags={"Workload": "Training"}, **busy)
    night.vm("serve", tags={"workload": "inference", "team": "research"}, **busy)
    night.vm("on-spot", tags={"workload": "batch"}, priority="Spot", **busy)
    night.vm("idle-train", tags={"workload": "training"}, gpu=(1.0, 2.0), daily_cost="88.152")
    found = night.evaluate(db_url)
    assert {name for rule, name in found if rule == SPOT} == {"train"}
    train = found[(SPOT, "train")]
    # 2,681.29 a month billed; spot lists at 1.1019 / 3.673 = 30 % of the price
    assert train.monthly_saving == Decimal("1876.90") and train.saving_basis == "billed"
    assert train.evidence["tags"] == "workload=training"
    assert "evicted" in train.evidence["caveat"]
    tuned = night.evaluate(db_url, rules={"interruptible_tags": ["team=research"]})
    assert {name for rule, name in tuned if rule == SPOT} == {"serve"}


ORPHANED = "gpu-disks-orphaned"


def test_gpu_disks_orphaned_unattached_or_kept_by_a_long_deallocated_gpu_vm(db_url):
    night = Night()
    night.vm("parked", state="deallocated")
    night.vm("recent", state="deallocated")
    night.vm("cpu-parked", size="Standard_D4s_v5", state="deallocated")
    night.vm("running", gpu=(60.0, 90.0), schedule="Enabled")
    night.disk("loose", "Unattached", 2, daily_cost="4.443945")
    night.disk("fresh", "Unattached", 0.25, daily_cost="4.443945")
    night.disk("unbilled", "Unattached", 40)
    night.disk("parked-os", "Reserved", 20, vm="parked", daily_cost="0.648000", size_gb=128)
    night.disk("recent-os", "Reserved", 10, vm="recent", daily_cost="0.648000", size_gb=128)
    night.disk("cpu-os", "Reserved", 30, vm="cpu-parked", daily_cost="0.648000")
    night.disk("in-use", "Attached", 30, vm="running", daily_cost="4.443945")
    found = night.evaluate(db_url)
    assert {name for rule, name in found if rule == ORPHANED} == {"loose", "parked-os"}
    loose = found[(ORPHANED, "loose")]
    # 4.443945 a day x 730 / 24 = 135.17 a month (a P30 disk)
    assert loose.monthly_saving == Decimal("135.17") and loose.saving_basis == "billed"
    assert loose.evidence["managed_by"] == "nothing" and loose.evidence["days_in_state"] == 2.0
    assert found[(ORPHANED, "parked-os")].monthly_saving == Decimal("19.71")
    tuned = night.evaluate(db_url, rules={"disk_deallocated_days": 7, "disk_unattached_days": 0})
    assert {name for rule, name in tuned if rule == ORPHANED} == {
        "loose",
        "fresh",
        "parked-os",
        "recent-os",
    }


def test_report_counts_gpu_hours_busy_or_idle_by_gpu_else_cpu(db_url):
    """An hour is idle by its GPU average where the VM has GPU telemetry, else by its CPU
    average; GPU memory doesn't count. Each hour weighs the VM's GPUs."""
    from finops.report.build import build

    night = Night()
    night.vm("gpu-idle", gpu=(1.0, 2.0), cpu=(90.0, 95.0), gpu_memory=(100.0, 200.0))
    night.vm("gpu-busy", gpu=(80.0, 90.0), cpu=(1.0, 2.0), hours=24)
    night.vm("cpu-idle", cpu=(1.0, 2.0))
    night.vm("cpu-busy", cpu=(50.0, 60.0), hours=48)
    night.vm("no-gpus", size="Standard_D4s_v5", cpu=(1.0, 2.0))
    engine = engine_for(db_url)
    run_id = night.store(engine)
    with engine.connect() as conn:
        hours = build(conn, run_id, load_settings()).gpu_hours
    engine.dispose()
    assert sum(hours["busy"]) == 24 + 48
    assert sum(hours["idle"]) == 168 * 2
    assert hours["idle_share"] == round(336 / (336 + 72) * 100)
    today = hours["days"].index(NOW.date())  # its 12 hours up to noon
    assert hours["busy"][today] == 12 + 12
    assert hours["idle"][today] == 12 + 12


def test_utilisation_reads_back_every_hour_exactly(db_url):
    """The database joins a resource's hourly values into a string: floats that need 17
    digits, hours without a maximum and hours without an average give the figures Python
    computes from the hours themselves, on both backends."""
    from finops.rules.common import _joined, percentile, utilisation

    night = Night().vm("odd")
    hours = [
        (NOW - timedelta(hours=h + 1), 0.1 + 0.2 + h / 3, None if h % 5 == 0 else 1 / 3 + h * 1.1)
        for h in range(48)
    ]
    hours.append((NOW - timedelta(hours=60), None, 97.00000000000001))
    for ts, average, maximum in hours:
        night.c.metrics.append(
            {"resource_id": rid("odd"), "metric": "gpu", "ts": ts, "average": average,
             "maximum": maximum}
        )  # fmt: skip
    engine = engine_for(db_url)
    run_id = night.store(engine)
    with engine.connect() as conn:
        found = utilisation(conn, run_context(conn, run_id), "gpu", [rid("odd")])[rid("odd")]
        joined = conn.execute(select(_joined(conn, schema.metrics_hourly.c.maximum))).scalar()
    engine.dispose()
    assert sorted(map(float, joined.split(","))) == sorted(m for _, _, m in hours if m is not None)
    averages = [a for _, a, _ in hours if a is not None]
    maxima = [m if m is not None else a for _, a, m in hours]
    assert found.hours == 48 and found.newest == NOW - timedelta(hours=1)
    assert found.average == round(sum(averages) / len(averages), 2)
    assert found.p95_max == round(percentile(maxima, 95), 2)


def test_utilisation_is_read_once_a_night_per_resource_and_metric(sqlite_url):
    """Several rules ask for the same VMs' utilisation: a second ask reads only the VMs not
    asked for before, and the figures are those a first ask gives."""
    from sqlalchemy import event

    from finops.rules.common import utilisation

    night = Night()
    night.vm("a", gpu=(1.0, 2.0)).vm("b", gpu=(50.0, 90.0), hours=24).vm("no-data")
    engine = engine_for(sqlite_url)
    run_id = night.store(engine)
    reads = []
    event.listen(engine, "before_cursor_execute", lambda *args: reads.append(args[2]))
    with engine.connect() as conn:
        run = run_context(conn, run_id)
        first = utilisation(conn, run, "gpu", [rid("a")])
        reads.clear()
        both = utilisation(conn, run, "gpu", [rid("a"), rid("b"), rid("no-data")])
        assert sum("metrics_hourly" in sql for sql in reads) == 1
        reads.clear()
        assert utilisation(conn, run, "gpu", [rid("b"), rid("no-data")]) == {
            rid("b"): both[rid("b")]
        }
        assert not reads
        fresh = utilisation(conn, run_context(conn, run_id), "gpu", [rid("a"), rid("b")])
    engine.dispose()
    assert both == fresh and first == {rid("a"): fresh[rid("a")]}
    assert (both[rid("a")].hours, both[rid("b")].hours, both[rid("b")].average) == (168, 24, 50.0)
