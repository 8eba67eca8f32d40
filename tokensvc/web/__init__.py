"""The aiohttp layer: app factory, middlewares, handlers. Parses and validates, then calls services."""
