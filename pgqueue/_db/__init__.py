"""Database access: the only package that imports psycopg, SQLAlchemy or alembic."""
