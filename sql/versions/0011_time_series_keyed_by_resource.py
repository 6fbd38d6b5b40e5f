"""time series keyed by a small integer per resource

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25 09:00:00

costs_daily and metrics_hourly named their resource by its ARM id, ~150 characters, in their
primary keys: every b-tree of both tables held it once a row. They now hold `resource_key`,
the id's row in the new `resources` table. Measured on 10k VMs' cost rows: the table and its
indexes 596 MB -> 264 MB on SQLite, and the load's inserts faster on both backends. Both
tables are rebuilt; their rows are kept.
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

Money = sa.Numeric(precision=18, scale=6)
KEYS = {
    'costs_daily': ['source', 'file_id', 'resource', 'usage_date', 'cost_type', 'meter_category'],
    'metrics_hourly': ['resource', 'metric', 'ts'],
}
DAY_INDEX = ['usage_date', 'source', 'subscription_id', 'cost', 'currency']


def _columns(table: str, resource: sa.Column) -> list[sa.Column]:
    if table == 'metrics_hourly':
        return [
            resource,
            sa.Column('metric', sa.String(length=16), nullable=False),
            sa.Column('ts', sa.DateTime(), nullable=False),
            sa.Column('average', sa.Float(), nullable=True),
            sa.Column('maximum', sa.Float(), nullable=True),
            sa.Column('total', sa.Float(), nullable=True),
        ]
    return [
        sa.Column('source', sa.String(length=8), nullable=False),
        sa.Column('file_id', sa.Integer(), nullable=False),
        resource,
        sa.Column('usage_date', sa.Date(), nullable=False),
        sa.Column('cost_type', sa.String(length=16), nullable=False),
        sa.Column('meter_category', sa.String(length=128), nullable=False),
        sa.Column('subscription_id', sa.String(length=64), nullable=False),
        sa.Column('resource_group', sa.String(length=128), nullable=False),
        sa.Column('cost', Money, nullable=False),
        sa.Column('currency', sa.String(length=3), nullable=False),
    ]


def _rebuild(table: str, resource: sa.Column, value: str) -> None:
    """Recreate `table` with `resource` as its resource column, filled with `value` (SQL over
    the old table `o` joined to resources `r`)."""
    if table == 'costs_daily':
        op.drop_index('ix_costs_daily_day', table_name=table)
    op.rename_table(table, f'{table}_0010')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f'ALTER TABLE {table}_0010 RENAME CONSTRAINT pk_{table} TO pk_{table}_0010')
    columns = _columns(table, resource)
    key = [resource.name if k == 'resource' else k for k in KEYS[table]]
    op.create_table(
        table,
        *columns,
        sa.PrimaryKeyConstraint(*key, name=op.f(f'pk_{table}')),
        sqlite_with_rowid=False,
    )
    names = [c.name for c in columns]
    picked = [value if n == resource.name else f'o.{n}' for n in names]
    other = 'resource_id' if resource.name == 'resource_key' else 'resource_key'
    join = 'r.resource_id = o.resource_id' if other == 'resource_id' else 'r.id = o.resource_key'
    op.execute(
        f'INSERT INTO {table} ({", ".join(names)}) SELECT {", ".join(picked)} '
        f'FROM {table}_0010 o JOIN resources r ON {join}'
    )
    op.drop_table(f'{table}_0010')
    if table == 'costs_daily':
        op.create_index('ix_costs_daily_day', table, DAY_INDEX)


def upgrade() -> None:
    op.create_table(
        'resources',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('resource_id', sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_resources')),
    )
    op.create_index('ix_resources_resource_id', 'resources', ['resource_id'], unique=True)
    op.execute(
        'INSERT INTO resources (resource_id) SELECT resource_id FROM ('
        'SELECT resource_id FROM costs_daily UNION SELECT resource_id FROM metrics_hourly'
        ') ids ORDER BY resource_id'
    )
    for table in KEYS:
        _rebuild(table, sa.Column('resource_key', sa.Integer(), nullable=False), 'r.id')


def downgrade() -> None:
    for table in KEYS:
        _rebuild(
            table, sa.Column('resource_id', sa.String(length=512), nullable=False), 'r.resource_id'
        )
    op.drop_index('ix_resources_resource_id', table_name='resources')
    op.drop_table('resources')
