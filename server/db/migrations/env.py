"""Alembic environment: runs on the connection handed over by server.db.engine.migrate()."""

from alembic import context
from sqlalchemy import Connection

from server.db.models import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `vteller db upgrade`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode rebuilds tables instead
    # SQLite and PostgreSQL both roll DDL back: a failed migration leaves the schema untouched.
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
