"""resource groups with their tags

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 05:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('resource_groups',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('subscription_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_resource_groups_run_id'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'subscription_id', 'name', name=op.f('pk_resource_groups'))
    )


def downgrade() -> None:
    op.drop_table('resource_groups')
