"""The dashboard and HTTP admin API, an ASGI app (the ``web`` extra: Starlette, Jinja2, uvicorn,
prometheus-client; htmx ships as a static file).

Example:
    >>> from pgqueue.web import create_app
    >>> app = create_app("postgresql://app@db/app", admin_token="...")   # serve with any ASGI server
"""

from pgqueue.web.app import create_app

__all__ = ["create_app"]
