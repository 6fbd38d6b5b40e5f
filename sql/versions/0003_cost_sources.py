"""cost sources: Query API and FOCUS export rows side by side, export files remembered

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 09:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

Money = sa.Numeric(precision=18, scale=6)


def _scope(resource_id):
    parts = resource_id.split("/")
    sub = parts[2] if len(parts) > 2 and parts[1] == "subscriptions" else ""
    group = parts[4] if len(parts) > 4 and parts[3] == "resourcegroups" else ""
    return sub, group


def upgrade() -> None:
    op.create_table('cost_files',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('location', sa.String(length=1024), nullable=False),
    sa.Column('folder', sa.String(length=1024), nullable=False),
    sa.Column('fingerprint', sa.String(length=256), nullable=False),
    sa.Column('modified', sa.DateTime(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('first_day', sa.Date(), nullable=True),
    sa.Column('last_day', sa.Date(), nullable=True),
    sa.Column('coverage', sa.JSON(), nullable=False),
    sa.Column('loaded_at', sa.DateTime(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_cost_files_run_id'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cost_files')),
    sa.UniqueConstraint('location')
    )
    op.create_table('focus_resources',
    sa.Column('resource_id', sa.String(length=512), nullable=False),
    sa.Column('resource_name', sa.String(length=256), nullable=False),
    sa.Column('service_name', sa.String(length=128), nullable=False),
    sa.Column('service_category', sa.String(length=64), nullable=False),
    sa.Column('sku_id', sa.String(length=128), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('last_usage_date', sa.Date(), nullable=False),
    sa.PrimaryKeyConstraint('resource_id', name=op.f('pk_focus_resources'))
    )
    # costs_daily gains its source and scope columns in its primary key: rebuilt, rows kept.
    op.drop_index('ix_costs_daily_date', table_name='costs_daily')
    op.rename_table('costs_daily', 'costs_daily_0002')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE costs_daily_0002 RENAME CONSTRAINT pk_costs_daily TO pk_costs_daily_0002')
    new = op.create_table('costs_daily',
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('file_id', sa.Integer(), nullable=False),
    sa.Column('resource_id', sa.String(length=512), nullable=False),
    sa.Column('usage_date', sa.Date(), nullable=False),
    sa.Column('cost_type', sa.String(length=16), nullable=False),
    sa.Column('meter_category', sa.String(length=128), nullable=False),
    sa.Column('subscription_id', sa.String(length=64), nullable=False),
    sa.Column('resource_group', sa.String(length=128), nullable=False),
    sa.Column('cost', Money, nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.PrimaryKeyConstraint('source', 'file_id', 'resource_id', 'usage_date', 'cost_type', 'meter_category', name=op.f('pk_costs_daily'))
    )
    bind = op.get_bind()
    old = sa.table('costs_daily_0002', sa.column('resource_id', sa.String()),
                   sa.column('usage_date', sa.Date()), sa.column('cost_type', sa.String()),
                   sa.column('meter_category', sa.String()), sa.column('cost', Money),
                   sa.column('currency', sa.String()))
    rows = bind.execute(sa.select(old)).mappings()
    while chunk := rows.fetchmany(5000):
        bind.execute(new.insert(), [
            {**row, 'source': 'query', 'file_id': 0,
             'subscription_id': _scope(row['resource_id'])[0],
             'resource_group': _scope(row['resource_id'])[1]}
            for row in chunk
        ])
    op.drop_table('costs_daily_0002')
    op.create_index('ix_costs_daily_date', 'costs_daily', ['usage_date'], unique=False)
    op.create_index('ix_costs_daily_scope', 'costs_daily', ['source', 'subscription_id', 'usage_date'], unique=False)


def downgrade() -> None:
    raise NotImplementedError("0003 is not reversible: restore the store from a backup")
