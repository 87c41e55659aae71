"""The HTTP service around the GIF engine. Kept empty on purpose: the worker imports ``service.jobs`` and
friends without pulling in FastAPI (only ``service.app`` and ``service.routes`` do).
"""
