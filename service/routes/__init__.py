"""The HTTP routes, one module per resource; each handler delegates to ``service.operations`` or a store."""
