"""``python -m service``: serve the API with uvicorn on ``GIF_HOST``:``GIF_PORT``, logging JSON lines."""

from __future__ import annotations

import torch
import uvicorn

from service.core.logs import configure_logging
from service.core.settings import Settings
from service.web.app import create_app
from service.web.server import server_config


def main() -> None:
    settings = Settings()
    log_config = configure_logging(settings.log_level)
    torch.set_num_threads(settings.api_torch_threads)  # the API only checks data; requests run in parallel threads
    uvicorn.Server(server_config(create_app(settings), settings, log_config=log_config)).run()


if __name__ == "__main__":
    main()
