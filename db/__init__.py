"""Persistence: SQLAlchemy models, Alembic migrations, repositories (all SQL lives here)."""
