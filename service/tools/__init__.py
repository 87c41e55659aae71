"""Developer tools: ``launch`` (``make run``), the test suite's small HTTP ``client`` and ``openapi_snapshot``
(``make openapi``)."""
