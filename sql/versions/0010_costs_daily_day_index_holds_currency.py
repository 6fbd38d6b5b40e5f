"""costs_daily: the day index also holds the currency

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 09:00:00

The report's spend per source, subscription and day picks one cost type in one currency. The
index held every column it reads but the currency, so SQLite looked each row of the window up
in the table, or read every stored Query API row by the primary key instead: 2.9 s of a
10k-VM store's report, growing with the history kept. With the currency the index answers the
query alone, over the window's rows only: 0.4 s.
"""

from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_costs_daily_day', table_name='costs_daily')
    op.create_index(
        'ix_costs_daily_day',
        'costs_daily',
        ['usage_date', 'source', 'subscription_id', 'cost', 'currency'],
    )


def downgrade() -> None:
    op.drop_index('ix_costs_daily_day', table_name='costs_daily')
    op.create_index(
        'ix_costs_daily_day', 'costs_daily', ['usage_date', 'source', 'subscription_id', 'cost']
    )
