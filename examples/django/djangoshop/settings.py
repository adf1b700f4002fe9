"""Settings of the example project: one PostgreSQL database, from DJANGOSHOP_DATABASE_URL."""

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ.get("DJANGOSHOP_DATABASE_URL", "postgresql://localhost/djangoshop"))

SECRET_KEY = "example-only-not-secret"  # noqa: S105 - an example project
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "pgqueue.contrib.django",  # python manage.py pgqueue_worker
    "djangoshop",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",  # on psycopg 3
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
