"""A minimal FastAPI shop: a lifespan-managed pgqueue worker, and enqueue in the request's session."""
