"""Integrations with frameworks, each behind an optional extra (``pgqueue[django]``...)."""
