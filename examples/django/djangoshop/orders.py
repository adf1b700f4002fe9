"""Business code: the order and its receipt job commit together, or not at all."""

from django.db import connection, transaction

from djangoshop.models import Order
from djangoshop.tasks import send_receipt


def place_order(email: str, total_cents: int) -> tuple[Order, int]:
    with transaction.atomic():
        order = Order.objects.create(email=email, total_cents=total_cents)
        if total_cents <= 0:
            raise ValueError("an order must cost something")  # rolls back the order and the job
        job_id = send_receipt.options(unique_key=f"receipt:{order.pk}").enqueue(connection, order_id=order.pk)
    return order, job_id
