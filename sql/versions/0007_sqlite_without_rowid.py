"""SQLite: the time series tables without rowid

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 12:00:00

costs_daily and metrics_hourly have composite primary keys that most reads go by. As rowid
tables SQLite kept each row twice, in the table and in the primary key's index; WITHOUT ROWID
keeps it once, in the primary key's b-tree, so a night's bulk load writes one b-tree less.
PostgreSQL has no such distinction: nothing changes there.
"""

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TABLES = ('costs_daily', 'metrics_hourly')


def _rebuild(table: str, without_rowid: bool) -> None:
    bind = op.get_bind()
    create = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar_one()
    indexes = bind.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL", (table,)
    ).all()
    create = create.strip().removesuffix('WITHOUT ROWID').strip()
    if without_rowid:
        create += ' WITHOUT ROWID'
    for name, _ in indexes:
        op.execute(f'DROP INDEX {name}')
    op.execute(f'ALTER TABLE {table} RENAME TO {table}_old')
    op.execute(create)
    op.execute(f'INSERT INTO {table} SELECT * FROM {table}_old')
    op.execute(f'DROP TABLE {table}_old')
    for _, sql in indexes:
        op.execute(sql)


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        for table in TABLES:
            _rebuild(table, without_rowid=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        for table in TABLES:
            _rebuild(table, without_rowid=False)
