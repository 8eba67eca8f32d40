"""The aiohttp layer: app factory, request pipeline and routes, handlers. Parses and validates, then calls services."""
