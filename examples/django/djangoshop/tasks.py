"""The project's pgqueue App. The worker (`manage.py pgqueue_worker`) connects to Django's database."""

import pgqueue

app = pgqueue.App()


@app.task(name="send-receipt", queue="emails")
def send_receipt(job: pgqueue.Job, order_id: int) -> dict[str, str]:
    from djangoshop.models import Order

    order = Order.objects.get(pk=order_id)
    # ... send the e-mail ...
    order.receipt_sent = True
    order.save(update_fields=["receipt_sent"])
    return {"sent_to": order.email}
