"""`log`, the logging helper of ModelArts' built-in inference images (`import log`,
`from model_service import log`, `import model_service.log as log`): `log.getLogger(name)`.

Scripts log their steps at INFO through it, and the platform shows those lines. Under maserve the
logger is a standard one at INFO whose records reach maserve's stdout handler like every other
line (JSON or text, `MASERVE_LOG_FORMAT`); maserve's own root level stays WARNING.
"""

from __future__ import annotations

import logging


def getLogger(name: str = "model_service") -> logging.Logger:  # noqa: N802 - the platform's name
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger
