"""The HTTP API (FastAPI): the app, its routes, request and response schemas, problem+json errors, API keys,
upload streaming and validation, and HTTP metrics. It builds on ``service.core`` and never runs an edit."""
