"""Azure OpenAI provisioned throughput: collection through the SDK against the simulator, the
break-even and right-sizing maths on hand-computed figures, and the three PTU rules."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from finops.azure import metrics, openai
from finops.catalog import ptu_models
from finops.config import load_settings
from finops.rules.ptu_pricing import (
    break_even_percent,
    cheapest_ptu,
    full_ptu_payg_value,
    payg_cost,
    ptu_month,
    ptus_for_rate,
    round_ptus,
)
from finops.sim.estate import PAYG_PTU, PTU_SATURATED, PTU_UNDERUSED
from finops.store import schema
from tests.test_rules import NOW, SUB, Night

GPT4O = ptu_models()[("gpt-4o", "global")]
GPT4O_REGIONAL = ptu_models()[("gpt-4o", "regional")]


# -- the maths ----------------------------------------------------------------------------
def test_ptu_counts_round_up_to_the_increment_and_the_minimum():
    assert round_ptus(GPT4O, Decimal("37.5")) == 40
    assert round_ptus(GPT4O, Decimal("40")) == 40
    assert round_ptus(GPT4O, Decimal("40.01")) == 45
    assert round_ptus(GPT4O, Decimal("3")) == 15  # global minimum
    assert round_ptus(GPT4O_REGIONAL, Decimal("60")) == 100  # regional: steps of 50
    assert round_ptus(GPT4O_REGIONAL, Decimal("1")) == 50
    # 231,000 capacity units a minute over 2,500 a PTU = 92.4 PTU -> 95
    assert ptus_for_rate(GPT4O, Decimal(231_000)) == 95


def test_prices_per_basis_and_the_break_even():
    assert ptu_month(GPT4O, "hourly") == Decimal("730.00")  # 1.00 x 730 h
    assert ptu_month(GPT4O, "monthly-reservation") == Decimal(260)
    assert ptu_month(GPT4O, "yearly-reservation") == Decimal(221)  # 2,652 / 12
    # a full PTU-month of gpt-4o input: 2,500 x 60 x 730 = 109.5 M tokens at 2.50 = 273.75
    zero = Decimal(0)
    assert full_ptu_payg_value(GPT4O, zero, zero) == Decimal("273.75")
    assert round(break_even_percent(GPT4O, "yearly-reservation", zero, zero), 2) == Decimal("80.73")
    assert break_even_percent(GPT4O, "hourly", zero, zero) > 100  # never, on price alone
    mini = ptu_models()[("gpt-4o-mini", "global")]
    assert round(break_even_percent(mini, "yearly-reservation", zero, zero)) == 91
    # outputs weigh 4 and cost 4x: a 1:4 mix keeps the value per capacity unit
    assert full_ptu_payg_value(GPT4O, Decimal(4), Decimal(1)) == Decimal("273.75")
    assert payg_cost(GPT4O, Decimal(1_500_000), Decimal(375_000)) == Decimal("7.5")
    best = cheapest_ptu(GPT4O, 95)
    assert (best.basis, best.monthly) == ("yearly-reservation", Decimal(20995))


# -- the rules, on nights built by hand ---------------------------------------------------
class AiNight(Night):
    def deployment(
        self,
        name,
        model="gpt-4o",
        sku="GlobalProvisionedManaged",
        capacity=100,
        hours=48,
        util=None,
        tokens_in=0,
        tokens_out=0,
        throttled=0,
        burst_every=0,  # every Nth hour carries 3x the tokens
    ):
        account = ACCOUNT
        rid = f"{account}/deployments/{name}"
        self.c.ai_deployments.append(
            {
                "resource_id": rid,
                "account_id": account,
                "account_name": "oai",
                "subscription_id": SUB,
                "resource_group": "ai",
                "location": "eastus",
                "kind": "OpenAI",
                "name": name,
                "model": model,
                "model_version": "1",
                "sku": sku,
                "capacity": capacity,
            }
        )
        for h in range(hours):
            ts = NOW - timedelta(hours=h + 1)
            factor = 3 if burst_every and h % burst_every == 0 else 1
            series = {
                "tokens_in": tokens_in * factor,
                "tokens_out": tokens_out * factor,
                "throttled": throttled,
            }
            if util is not None:
                self.c.metrics.append(
                    {
                        "resource_id": rid,
                        "metric": "ptu_util",
                        "ts": ts,
                        "average": util[0],
                        "maximum": util[1],
                        "total": None,
                    }
                )
            for metric, total in series.items():
                self.c.metrics.append(
                    {
                        "resource_id": rid,
                        "metric": metric,
                        "ts": ts,
                        "average": None,
                        "maximum": None,
                        "total": float(total),
                    }
                )
        return self

    def account_cost(self, billed: str, amortized: str, days: int = 7):
        """The account's daily cost as the Query API collector stores it, both cost types."""
        for d in range(1, days + 1):
            for cost_type, amount in (("ActualCost", billed), ("AmortizedCost", amortized)):
                self.c.costs.append(
                    {
                        "source": "query",
                        "file_id": 0,
                        "resource_id": ACCOUNT,
                        "usage_date": NOW.date() - timedelta(days=d),
                        "cost_type": cost_type,
                        "meter_category": "Cognitive Services",
                        "subscription_id": SUB,
                        "resource_group": "ai",
                        "cost": Decimal(amount),
                        "currency": "USD",
                    }
                )
        return self


ACCOUNT = (
    f"/subscriptions/{SUB}/resourcegroups/ai/providers/microsoft.cognitiveservices/accounts/oai"
)


def test_ptu_underused_right_sizes_or_moves_to_pay_as_you_go(db_url):
    night = AiNight()
    # 100 PTU peaking at 30 %; tokens worth 7.50 an hour at pay-as-you-go
    night.deployment("over", util=(20.0, 30.0), tokens_in=1_500_000, tokens_out=375_000)
    night.deployment("at-threshold", util=(40.0, 50.0), tokens_in=1_500_000)
    night.deployment("too-new", util=(20.0, 30.0), hours=23)
    night.deployment("payg", sku="GlobalStandard", capacity=1000, tokens_in=1000)
    found = night.evaluate(db_url)
    assert {k for k in found if k[0] == "ptu-underused"} == {("ptu-underused", "over")}
    f = found[("ptu-underused", "over")]
    e = f.evidence
    assert e["utilization_p95"] == 30.0 and e["right_sized_ptus"] == 40  # 100 x 30 / 80 -> 40
    assert e["monthly_cost"] == "73000.00" and e["right_sized_monthly_cost"] == "29200.00"
    assert e["payg_monthly_cost"] == "5475.00"  # 7.50 x 730
    assert e["break_even_percent"] == "266.67"  # 730 / 273.75
    assert e["recommendation"] == "pay-as-you-go" and f.proposed_action == "move-to-pay-as-you-go"
    assert f.monthly_saving == Decimal("67525.00") and f.saving_basis == "ptu-hourly"
    # under a yearly reservation the same deployment costs 100 x 221 a month
    yearly = night.evaluate(db_url, ptu={"pricing_basis": "yearly-reservation"})
    f = yearly[("ptu-underused", "over")]
    assert f.monthly_saving == Decimal("16625.00") and f.saving_basis == "ptu-yearly-reservation"


@pytest.mark.parametrize(
    ("amortized", "configured", "basis", "saving"),
    [
        # a yearly reservation amortizes 100 PTU x 221 a month to 726.58 a day, billed nothing
        ("726.58", "hourly", "yearly-reservation", "16625.00"),
        ("854.79", "hourly", "monthly-reservation", "20525.00"),  # 26,000 - 5,475
        ("2400.00", "yearly-reservation", "hourly", "67525.00"),  # billed as used: no gap
    ],
)
def test_the_pricing_basis_is_read_from_amortized_cost(
    db_url, amortized, configured, basis, saving
):
    night = AiNight()
    night.deployment("over", util=(20.0, 30.0), tokens_in=1_500_000, tokens_out=375_000)
    night.account_cost("2400.00" if basis == "hourly" else "0", amortized)
    f = night.evaluate(db_url, ptu={"pricing_basis": configured})[("ptu-underused", "over")]
    assert f.evidence["pricing_basis"] == basis and f.saving_basis == f"ptu-{basis}"
    assert f.evidence["pricing_basis_from"] == "amortized cost"
    assert f.monthly_saving == Decimal(saving)
    assert ("commitment" in f.evidence) == (basis != "hourly")


def test_ptu_underused_proposes_fewer_ptus_when_tokens_are_dear(db_url):
    night = AiNight()
    # 100 PTU at 30 % peak carrying 30 M input tokens an hour: 75.00 an hour pay-as-you-go
    night.deployment("over", util=(25.0, 30.0), tokens_in=30_000_000)
    f = night.evaluate(db_url)[("ptu-underused", "over")]
    assert f.evidence["payg_monthly_cost"] == "54750.00"
    assert f.evidence["recommendation"] == "40 PTU, hourly"
    assert f.proposed_action == "reduce-ptu"
    assert f.monthly_saving == Decimal("43800.00")  # 73,000 - 29,200


def test_payg_ptu_candidate_when_tokens_cost_more_than_the_ptus(db_url):
    night = AiNight()
    # 165,000 input and 16,500 output tokens a minute: 231,000 capacity units -> 95 PTU
    busy = {"sku": "GlobalStandard", "capacity": 1000}
    night.deployment("busy", tokens_in=9_900_000, tokens_out=990_000, **busy)
    # the same peak, but only one hour in ten: the mean is far below the PTUs' capacity
    night.deployment("bursty", tokens_in=3_300_000, tokens_out=330_000, burst_every=10, **busy)
    # steady but light: 3.50 an hour, 2,555 a month, under the 15-PTU minimum's 3,315
    night.deployment("light", tokens_in=1_000_000, tokens_out=100_000, **busy)
    night.deployment("no-price", model="some-model", tokens_in=99_000_000, **busy)
    found = night.evaluate(db_url)
    assert {k for k in found if k[0] == "payg-ptu-candidate"} == {("payg-ptu-candidate", "busy")}
    f = found[("payg-ptu-candidate", "busy")]
    # (9.9 M x 2.50 + 0.99 M x 10.00) / 1 M = 34.65 an hour, x 730 = 25,294.50 a month
    assert f.evidence["payg_monthly_cost"] == "25294.50"
    assert f.evidence["ptus"] == 95 and f.evidence["ptu_monthly_cost"] == "20995.00"
    assert f.evidence["pricing_basis"] == "yearly-reservation"
    assert f.evidence["commitment"] == "95 PTU for a year: 251940.00 USD"
    assert f.monthly_saving == Decimal("4299.50")


def test_ptu_saturated_needs_both_the_peak_and_throttling(db_url):
    night = AiNight()
    night.deployment("saturated", capacity=50, util=(97.0, 100.0), throttled=10)
    night.deployment("busy-no-429", capacity=50, util=(97.0, 100.0))
    night.deployment("429-not-full", capacity=50, util=(80.0, 90.0), throttled=10)
    found = night.evaluate(db_url)
    assert {k for k in found if k[0] == "ptu-saturated"} == {("ptu-saturated", "saturated")}
    f = found[("ptu-saturated", "saturated")]
    assert f.evidence["throttled_requests"] == 480 and f.monthly_saving == 0
    assert f.saving_basis == "none"


def test_catalog_override_replaces_prices(tmp_path):
    from finops.catalog import PTU_COLUMNS
    from finops.config import ConfigError

    custom = tmp_path / "prices.csv"
    row = "gpt-4o,global,15,5,2500,4,2.00,8.00,0.80,200,2000,USD"
    custom.write_text(",".join(PTU_COLUMNS) + "\n" + row + "\n")
    settings = load_settings(ptu={"catalog_file": str(custom)})
    model = ptu_models(str(settings.ptu.catalog_file))[("gpt-4o", "global")]
    assert model.ptu_hour == Decimal("0.80") and model.payg_input_per_1m == Decimal("2.00")
    assert ptu_models(str(custom))[("gpt-4o-mini", "global")].ptu_hour == Decimal("1.00")
    custom.write_text(",".join(PTU_COLUMNS) + "\n" + row.replace("0.80", "cheap") + "\n")
    ptu_models.cache_clear()
    with pytest.raises(ConfigError, match=r"prices\.csv row 1: not a number"):
        load_settings(ptu={"catalog_file": str(custom)})


# -- against the simulator ----------------------------------------------------------------
def test_collectors_list_accounts_and_deployments_without_a_call_per_deployment(
    clients, sim, estate
):
    before = dict(sim.requests)
    accounts = openai.accounts(clients, [s.subscription_id for s in estate.subscriptions])
    deployments = [d for account in accounts for d in openai.deployments(clients, account)]
    assert sim.requests["graph"] - before.get("graph", 0) == 1
    assert sim.requests["ai-deployments"] - before.get("ai-deployments", 0) == len(accounts) == 2
    by_name = {d["name"]: d for d in deployments}
    assert len(by_name) == sum(len(a.deployments) for a in estate.ai_accounts)
    ptu = by_name["chat-gpt4o-ptu"]
    assert (ptu["model"], ptu["sku"], ptu["capacity"]) == (
        "gpt-4o",
        "GlobalProvisionedManaged",
        100,
    )
    assert ptu["resource_id"] == ptu["resource_id"].lower() and ptu["kind"] == "OpenAI"
    assert by_name["lab-gpt4o-mini-payg"]["kind"] == "AIServices"

    start = estate.now - timedelta(hours=6)
    before_metrics = sim.requests["metrics"]
    rows = []
    for region, ids in metrics.batches(accounts):
        rows += openai.hourly_batch(clients, region, ids, start, estate.now)
    assert sim.requests["metrics"] - before_metrics == 2 * 2  # two calls per account batch
    per = {(r["resource_id"].rsplit("/", 1)[1], r["metric"]) for r in rows}
    assert ("chat-gpt4o-ptu", "ptu_util") in per and ("chat-gpt4o-ptu", "tokens_in") in per
    assert ("batch-gpt4o-payg", "ptu_util") not in per  # pay-as-you-go has no PTU utilization
    throttled = [r for r in rows if r["metric"] == "throttled" and r["total"]]
    assert {r["resource_id"].rsplit("/", 1)[1] for r in throttled} <= {"support-gpt41-ptu"}


def test_the_demo_estate_gives_exactly_the_seeded_ptu_findings(world):
    result = world.night()
    found = world.findings(result.run_id)
    for rule in (PTU_UNDERUSED, PAYG_PTU, PTU_SATURATED):
        expected = {rid.rsplit("/", 1)[1] for rid in world.estate.expected(rule)}
        assert {name for r, name in found if r == rule} == expected, rule
    with world.engine.connect() as conn:
        evidence = conn.execute(
            select(schema.findings.c.evidence).where(
                schema.findings.c.run_id == result.run_id,
                schema.findings.c.rule_id == PTU_UNDERUSED,
            )
        ).scalar_one()
    # oai-prod-eastus holds its PTUs under a yearly reservation: only amortized cost says so
    assert (evidence["pricing_basis"], evidence["pricing_basis_from"]) == (
        "yearly-reservation",
        "amortized cost",
    )
    html = result.report.read_text()
    assert 'data-deployment="chat-gpt4o-ptu" data-rules="ptu-underused"' in html
    assert html.count("yearly-reservation (from amortized cost)") == 3  # its 3 PTU deployments
    assert html.count("hourly (from amortized cost)") == 2  # ais-research-weu's
    assert "break-even at 81 % sustained use" in html
