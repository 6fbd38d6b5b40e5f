"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 23:03:24.838248
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "costs_daily",
        sa.Column("resource_id", sa.String(length=512), nullable=False),
        sa.Column("usage_date", sa.Date(), nullable=False),
        sa.Column("cost_type", sa.String(length=16), nullable=False),
        sa.Column("meter_category", sa.String(length=128), nullable=False),
        sa.Column("cost", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.PrimaryKeyConstraint(
            "resource_id", "usage_date", "cost_type", "meter_category", name=op.f("pk_costs_daily")
        ),
    )
    with op.batch_alter_table("costs_daily", schema=None) as batch_op:
        batch_op.create_index("ix_costs_daily_date", ["usage_date"], unique=False)

    op.create_table(
        "metrics_hourly",
        sa.Column("resource_id", sa.String(length=512), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.Column("average", sa.Float(), nullable=True),
        sa.Column("maximum", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("resource_id", "metric", "ts", name=op.f("pk_metrics_hourly")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("metrics_start", sa.DateTime(), nullable=True),
        sa.Column("metrics_end", sa.DateTime(), nullable=True),
        sa.Column("cost_start", sa.Date(), nullable=True),
        sa.Column("cost_end", sa.Date(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_table(
        "findings",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=512), nullable=False),
        sa.Column("severity", sa.String(length=8), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("monthly_saving", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("saving_basis", sa.String(length=32), nullable=False),
        sa.Column("proposed_action", sa.String(length=64), nullable=True),
        sa.Column("exempt", sa.Boolean(), nullable=False),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_findings_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "rule_id", "resource_id", name=op.f("pk_findings")),
    )
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.create_index("ix_findings_resource", ["rule_id", "resource_id"], unique=False)

    op.create_table(
        "quotas",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.String(length=64), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("family", sa.String(length=128), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("current_value", sa.Integer(), nullable=False),
        sa.Column("limit", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_quotas_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint(
            "run_id", "subscription_id", "location", "family", name=op.f("pk_quotas")
        ),
    )
    op.create_table(
        "schedules",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("resource_id", sa.String(length=512), nullable=False),
        sa.Column("schedule_id", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("daily_time", sa.String(length=8), nullable=True),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_schedules_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "resource_id", name=op.f("pk_schedules")),
    )
    op.create_table(
        "subscriptions",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_subscriptions_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "subscription_id", name=op.f("pk_subscriptions")),
    )
    op.create_table(
        "vm_sizes",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("size", sa.String(length=64), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_gb", sa.Float(), nullable=False),
        sa.Column("gpus", sa.Numeric(precision=8, scale=6), nullable=False),
        sa.Column("gpu_model", sa.String(length=64), nullable=True),
        sa.Column("gpu_memory_gb", sa.Integer(), nullable=True),
        sa.Column("family", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_vm_sizes_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "size", name=op.f("pk_vm_sizes")),
    )
    op.create_table(
        "vms",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("resource_id", sa.String(length=512), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("subscription_id", sa.String(length=64), nullable=False),
        sa.Column("resource_group", sa.String(length=128), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("size", sa.String(length=64), nullable=False),
        sa.Column("power_state", sa.String(length=32), nullable=False),
        sa.Column("os_type", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_vms_run_id"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "resource_id", name=op.f("pk_vms")),
    )


def downgrade() -> None:
    op.drop_table("vms")
    op.drop_table("vm_sizes")
    op.drop_table("subscriptions")
    op.drop_table("schedules")
    op.drop_table("quotas")
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index("ix_findings_resource")

    op.drop_table("findings")
    op.drop_table("runs")
    op.drop_table("metrics_hourly")
    with op.batch_alter_table("costs_daily", schema=None) as batch_op:
        batch_op.drop_index("ix_costs_daily_date")

    op.drop_table("costs_daily")
