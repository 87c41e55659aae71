"""The HTTP routes, one module per resource; each handler delegates to ``service.web.operations`` or a store."""
