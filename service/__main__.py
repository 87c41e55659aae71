"""``python -m service``: serve the API with uvicorn on ``GIF_HOST``:``GIF_PORT``, logging JSON lines."""

from __future__ import annotations

import torch
import uvicorn

from service.core.logs import configure_logging
from service.core.settings import Settings
from service.web.app import create_app


def main() -> None:
    settings = Settings()
    log_config = configure_logging(settings.log_level)
    torch.set_num_threads(settings.api_torch_threads)  # the API only checks data; requests run in parallel threads
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=log_config)


if __name__ == "__main__":
    main()
