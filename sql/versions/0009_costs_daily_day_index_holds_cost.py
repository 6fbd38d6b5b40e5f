"""costs_daily: the day index also holds the cost

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 15:45:00

The report adds up each source's billed cost per subscription and day over its window. SQLite
found the window's rows in (usage_date, source, subscription_id) and then looked each one up
in the table's b-tree by its primary key, which leads with the ~150-character resource id:
2.2 s of a 10k-VM store's report. A SQLite index holds the primary key's columns (and with
them cost_type), so with the cost added it answers that query alone: 0.27 s.
"""

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_costs_daily_day', table_name='costs_daily')
    op.create_index(
        'ix_costs_daily_day', 'costs_daily', ['usage_date', 'source', 'subscription_id', 'cost']
    )


def downgrade() -> None:
    op.drop_index('ix_costs_daily_day', table_name='costs_daily')
    op.create_index(
        'ix_costs_daily_day', 'costs_daily', ['usage_date', 'source', 'subscription_id']
    )
