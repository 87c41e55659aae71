"""The shared layer: settings, job and upload records in Redis, the artifact store, the queue, error kinds,
logs, the lost-job reaper and child-process supervision. The worker imports this and ``gif``, never
``service.web``; nothing here imports FastAPI or starlette."""
