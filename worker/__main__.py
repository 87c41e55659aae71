"""``python -m worker``: the worker supervisor of this host (see ``worker.supervisor``)."""

from worker.supervisor import main

if __name__ == "__main__":
    main()
