"""pgqueue migrate (placeholder; being written)."""


def migrate() -> None:
    """Create or upgrade the pgqueue schema."""
    raise NotImplementedError
