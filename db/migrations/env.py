"""Alembic environment: the URL comes from the caller (db.migrate), never from a file."""

from alembic import context
from sqlalchemy import create_engine, pool

from db.models import metadata

config = context.config
configured_url = config.get_main_option("sqlalchemy.url")
assert configured_url is not None, "db.engine.alembic_config sets sqlalchemy.url"
url: str = configured_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
