"""Every Resource Graph query finops sends, checked by Microsoft's Kusto parser against the
columns of Resources and ResourceContainers; the simulator refuses, as Resource Graph does, a
query the parser rejects, and finops says in one line what was refused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from finops.azure import graph, inventory, openai
from finops.sim.kql import KqlChecker

AZURE = Path(__file__).resolve().parents[1] / "finops" / "azure"
SENT = {
    "VMS": inventory.VMS,
    "SCHEDULES": inventory.SCHEDULES,
    "RESOURCE_GROUPS": inventory.RESOURCE_GROUPS,
    "DISKS": inventory.DISKS,
    "ACCOUNTS": openai.ACCOUNTS,
}
# the schedules query as it was: `time` is a KQL keyword, as a column and as a property name
UNBRACKETED = """Resources
| where type =~ 'microsoft.devtestlab/schedules'
| project id, target = properties.targetResourceId,
  time = properties.dailyRecurrence.time, timeZone = properties.timeZoneId"""


@pytest.fixture(scope="module")
def parser() -> KqlChecker:
    checker = KqlChecker.find()
    assert checker is not None, "make test installs the Kusto parser under .cache/kusto"
    return checker


def _queries_in_source() -> set[str]:
    """Every module-level string constant of finops/azure that reads a Resource Graph table."""
    found = set()
    for path in AZURE.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                text = node.value.value
                if isinstance(text, str) and text.split("\n")[0].strip() in (
                    "Resources",
                    "ResourceContainers",
                ):
                    found.add(text)
    return found


def test_every_query_finops_sends_is_listed_here():
    assert _queries_in_source() == set(SENT.values())


@pytest.mark.parametrize("name", sorted(SENT))
def test_the_query_parses_and_names_only_known_columns(parser, name):
    assert parser.errors(SENT[name]) == []


def test_the_parser_rejects_a_keyword_as_a_column_or_property_name(parser):
    codes = [e["code"] for e in parser.errors(UNBRACKETED)]
    assert "KS228" in codes  # `time = ...`: needs to be bracketed as ['time']
    assert "KS006" in codes  # `.time`: likewise as a property name
    unknown = parser.errors("Resources | project id, powerstate = propertes.x")
    assert [e["code"] for e in unknown] == ["KS142"]  # not a column of Resources


def test_the_simulator_refuses_what_the_parser_rejects(clients, estate, sim):
    assert sim.kql is not None
    subs = [s.subscription_id for s in estate.subscriptions]
    with pytest.raises(graph.InvalidQuery) as refused:
        list(graph.query(clients, subs, UNBRACKETED))
    message = str(refused.value)
    assert message.startswith("Resource Graph refused the query 'Resources ...': ")
    assert "needs to be bracketed as ['time']" in message
    assert "\n" not in message
    # a valid query still answers
    assert list(graph.query(clients, subs, inventory.RESOURCE_GROUPS))


def test_a_night_with_a_refused_query_is_partial_and_says_why(world, monkeypatch):
    monkeypatch.setattr(inventory, "SCHEDULES", UNBRACKETED)
    result = world.night()
    assert result.missing is not None
    assert result.missing.startswith("missing data: inventory for ")
    assert "Resource Graph refused the query" in result.missing
