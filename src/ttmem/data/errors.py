"""Error types of the data layer that are not plain bad arguments."""


class DataUnavailableError(RuntimeError):
    """A corpus could not be fetched or failed its checksum (offline, truncated, tampered)."""
