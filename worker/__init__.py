"""The edit worker: RQ takes job ids off the queue; ``worker.tasks.run_job`` runs each through ``gif.edit.run``.

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set, before anything loads torch (and
OpenMP with it): idle OpenMP threads then sleep instead of spinning. A worker shares its cores with the API,
other workers or anything else, and spinning threads made small edits 5-50x slower on a busy machine.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
