"""The edit worker: RQ takes job ids off the queue; ``worker.tasks.run_job`` runs each through ``gif.edit.run``."""
