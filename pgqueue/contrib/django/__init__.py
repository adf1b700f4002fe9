"""pgqueue in a Django project (``pip install 'pgqueue[django]'``).

- Enqueue on Django's own connection, inside ``transaction.atomic()``: the job commits or rolls
  back with the block (the postgresql backend on psycopg 3)::

      from django.db import connection, transaction

      with transaction.atomic():
          order = Order.objects.create(...)
          send_receipt.enqueue(connection, order_id=order.pk)

- Run a worker with ``python manage.py pgqueue_worker --app myproject.tasks:app`` after adding
  ``"pgqueue.contrib.django"`` to ``INSTALLED_APPS``. It connects to the App's DSN, else
  ``PGQUEUE_DSN``, else Django's ``default`` database (``--database`` picks another alias). Each
  job, sync or async, runs between two ``close_old_connections()``, as a request does, in the thread
  of its ORM calls.
- :func:`database_dsn` turns a Django database's settings into a DSN for ``pgqueue.App``.

See docs/guide/integrations.md.
"""

from __future__ import annotations

from pgqueue._db.connections import conninfo_from_params


def database_dsn(alias: str = "default") -> str:
    """The libpq DSN of Django's database ``alias`` (from ``settings.DATABASES``), for
    ``pgqueue.App(dsn=...)`` or ``pgqueue migrate --dsn``.

    Example:
        >>> app = pgqueue.App(dsn=pgqueue.contrib.django.database_dsn())
    """
    from django.db import connections

    return conninfo_from_params(connections[alias].get_connection_params())
