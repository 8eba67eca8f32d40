"""Storage: the one database runner (retry, unavailability), migrations, and the audit table."""
