"""Property-based tests of the money and threshold arithmetic."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from finops.catalog import ptu_models
from finops.config import load_settings
from finops.report.build import savings_by_currency
from finops.rules.common import money, percentile
from finops.rules.gpu_vm_no_auto_shutdown import off_hours_fraction
from finops.rules.ptu_pricing import (
    BASES,
    break_even_percent,
    full_ptu_payg_value,
    payg_cost,
    ptu_month,
    round_ptus,
)

amounts = st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False)
percent = st.floats(min_value=0, max_value=100, allow_nan=False)


@given(st.lists(percent, min_size=1, max_size=300), st.floats(min_value=0, max_value=100))
def test_percentile_is_a_member_between_min_and_max(values, q):
    p = percentile(values, q)
    assert p in values and min(values) <= p <= max(values)
    assert percentile(values, 100) == max(values)


@given(st.lists(percent, min_size=1, max_size=300), st.floats(0, 100), st.floats(0, 100))
def test_percentile_grows_with_q(values, q1, q2):
    low, high = sorted((q1, q2))
    assert percentile(values, low) <= percentile(values, high)


@given(amounts)
def test_money_rounds_to_cents_half_up_within_half_a_cent(value):
    rounded = money(value)
    assert rounded.as_tuple().exponent == -2
    assert abs(rounded - value) <= Decimal("0.005")


finding = st.fixed_dictionaries(
    {
        "resource_id": st.sampled_from(["a", "b", "c", "d"]),
        "currency": st.sampled_from(["USD", "EUR"]),
        "monthly_saving": amounts,
    }
)


@given(st.lists(finding, max_size=30))
def test_savings_count_each_resource_once_at_its_largest(findings):
    totals = savings_by_currency(findings)
    for currency, total in totals.items():
        mine = [f for f in findings if f["currency"] == currency]
        best = {}
        for f in mine:
            best[f["resource_id"]] = max(best.get(f["resource_id"], 0), f["monthly_saving"])
        assert total == sum(best.values())
        assert total <= sum(f["monthly_saving"] for f in mine)
        assert total >= max(f["monthly_saving"] for f in mine)


@given(
    st.integers(0, 23),
    st.integers(1, 24),
    st.sets(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1),
)
def test_off_hours_share_matches_the_working_window(start, length, days):
    end = min(24, start + length)
    hours = f"{start:02d}:00-{end:02d}:00"
    settings = load_settings(rules={"working_hours": hours, "working_days": sorted(days)})
    share = off_hours_fraction(settings)
    assert 0 <= share < 1
    assert share == (Decimal(168) - Decimal(end - start) * len(days)) / Decimal(168)


# -- provisioned throughput ----------------------------------------------------------------

models = st.sampled_from(sorted(ptu_models().values(), key=lambda m: (m.model, m.scope)))
tokens = st.decimals(min_value=0, max_value=10**12, places=0, allow_nan=False)


@given(models, st.decimals(min_value=0, max_value=10**5, places=3, allow_nan=False))
def test_ptu_rounding_is_the_smallest_valid_count_that_carries_the_need(model, need):
    ptus = round_ptus(model, need)
    assert ptus >= need and ptus >= model.ptu_min and ptus % model.ptu_increment == 0
    smaller = ptus - model.ptu_increment
    assert smaller < need or smaller < model.ptu_min  # one step less would not do


@given(models, tokens, tokens, tokens)
def test_payg_cost_adds_up_and_scales(model, a, b, out):
    assert payg_cost(model, a + b, out) == payg_cost(model, a, out) + payg_cost(model, b, 0)
    assert payg_cost(model, 2 * a, 2 * out) == 2 * payg_cost(model, a, out)


@given(models, tokens, tokens)
def test_break_even_is_where_ptu_and_payg_cost_the_same(model, tokens_in, tokens_out):
    for basis in BASES:
        share = break_even_percent(model, basis, tokens_in, tokens_out) / 100
        # the tokens a PTU carries at that share of a month, priced at pay-as-you-go
        value = full_ptu_payg_value(model, tokens_in, tokens_out) * share
        assert abs(value - ptu_month(model, basis)) < Decimal("0.000001")
    # a commitment never costs more a month than paying by the hour
    assert ptu_month(model, "yearly-reservation") <= ptu_month(model, "hourly")
