"""Alembic's environment: migrations run on the engine the store hands over
(store.alembic_config), online only. On PostgreSQL a transaction-scoped advisory lock makes
gateways starting together migrate one after the other."""

from alembic import context
from sqlalchemy import func, select

from gateway.server.reviews.models import Base

MIGRATION_LOCK = 0x7265766965777301  # any fixed number: the store's migration lock


def run() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            context.run_migrations()


run()
