"""Property-based tests of the money and threshold arithmetic."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from finops.config import load_settings
from finops.report.build import savings_by_currency
from finops.rules.common import money, percentile
from finops.rules.gpu_vm_no_auto_shutdown import off_hours_fraction

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
