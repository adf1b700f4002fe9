"""The Django integration: enqueue on Django's own connection inside transaction.atomic(), rolled
back with it, and a worker run by manage.py."""

import pytest
from django.core.management import call_command
from django.db import connection, transaction

import pgqueue
from pgqueue.testing import TestDatabase


def test_an_order_and_its_receipt_job_commit_together(shop: TestDatabase) -> None:
    from djangoshop.orders import place_order

    order, job_id = place_order("a@example.com", 1200)
    [job] = shop.assert_enqueued("send-receipt", args={"order_id": order.pk})
    assert (job.id, job.queue, job.unique_key) == (job_id, "emails", f"receipt:{order.pk}")


def test_a_failed_order_rolls_back_its_receipt_job(shop: TestDatabase) -> None:
    from djangoshop.models import Order
    from djangoshop.orders import place_order

    orders, jobs = Order.objects.count(), len(shop.enqueued("send-receipt"))
    with pytest.raises(ValueError, match="cost something"):
        place_order("b@example.com", 0)
    assert Order.objects.count() == orders
    assert len(shop.enqueued("send-receipt")) == jobs


def test_a_job_enqueued_in_a_savepoint_goes_with_the_savepoint(shop: TestDatabase) -> None:
    from djangoshop.models import Order
    from djangoshop.tasks import send_receipt

    with transaction.atomic():
        order = Order.objects.create(email="c@example.com", total_cents=5)
        try:
            with transaction.atomic():  # a savepoint
                send_receipt.enqueue(connection, order_id=order.pk)
                raise RuntimeError("changed my mind")
        except RuntimeError:
            pass
    assert Order.objects.filter(pk=order.pk).exists()
    shop.refute_enqueued("send-receipt", args={"order_id": order.pk})


def test_the_management_command_runs_the_worker_on_djangos_database(shop: TestDatabase) -> None:
    from djangoshop.orders import place_order
    from djangoshop.tasks import app

    order, job_id = place_order("d@example.com", 700)
    call_command("pgqueue_worker", app="djangoshop.tasks:app", until_empty=True, verbosity=0)

    order.refresh_from_db()
    assert order.receipt_sent
    assert app.result(connection, job_id, timeout=5) == {"sent_to": "d@example.com"}


# A second App for the test below: its jobs run in Django's ORM, one of them losing the worker
# thread's Django connection, as a database restart or an idle timeout would.
jobs = pgqueue.App()


@jobs.task(name="drop-django-connection", max_attempts=1)
def drop_django_connection(job: pgqueue.Job) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")


@jobs.task(name="count-orders", max_attempts=1)
def count_orders(job: pgqueue.Job) -> int:
    from djangoshop.models import Order

    return Order.objects.count()


def test_the_management_commands_worker_replaces_a_django_connection_that_died(shop: TestDatabase) -> None:
    from djangoshop.models import Order

    shop.bind(jobs)
    drop_django_connection.options(priority=0).enqueue(None)
    count = count_orders.options(priority=1).enqueue(None)

    # One thread runs both jobs: the second finds the first one's connection dead.
    call_command("pgqueue_worker", app=f"{__name__}:jobs", concurrency=1, until_empty=True, verbosity=0)

    assert [job.state for job in shop.enqueued("drop-django-connection")] == ["failed"]
    assert [job.state for job in shop.enqueued("count-orders")] == ["completed"]
    assert jobs.result(None, count, timeout=5) == Order.objects.count()
