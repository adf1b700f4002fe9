"""The Django integration: enqueue on Django's own connection inside transaction.atomic(), rolled
back with it, and a worker run by manage.py (its Django connections: test_django_worker_connections.py)."""

import pytest
from django.core.management import call_command
from django.db import connection, transaction

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
