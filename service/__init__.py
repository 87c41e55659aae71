"""The service around the GIF engine, in three rooms (kept empty here, so importing one pulls in no other):

- ``service.core``: the shared layer (settings, records, storage, queue, errors, logs, reaper) that the
  worker may import;
- ``service.web``: the FastAPI application (``python -m service`` serves it);
- ``service.tools``: developer tools (``make run`` is ``service.tools.launch``, ``make openapi``).
"""
