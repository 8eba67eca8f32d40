"""Operations: configuration, logs, metrics, background tasks and Redis connections."""
