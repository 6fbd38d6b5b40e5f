"""AI deployments, and metric totals (tokens, throttled requests)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 04:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ai_deployments',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('resource_id', sa.String(length=512), nullable=False),
    sa.Column('account_id', sa.String(length=512), nullable=False),
    sa.Column('account_name', sa.String(length=128), nullable=False),
    sa.Column('subscription_id', sa.String(length=64), nullable=False),
    sa.Column('resource_group', sa.String(length=128), nullable=False),
    sa.Column('location', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('model', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=32), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_ai_deployments_run_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'resource_id', name=op.f('pk_ai_deployments'))
    )
    with op.batch_alter_table('metrics_hourly', schema=None) as batch_op:
        batch_op.add_column(sa.Column('total', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('metrics_hourly', schema=None) as batch_op:
        batch_op.drop_column('total')
    op.drop_table('ai_deployments')
