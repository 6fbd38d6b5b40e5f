"""Alembic environment: finops passes its own connection (see finops.store.db.upgrade)."""

from alembic import context

from finops.store.schema import compared_on, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=compared_on(connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()
