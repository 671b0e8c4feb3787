"""`spoold api [--config PATH]`: serve the OpenAI Files and Batches API on the spool (SPEC section 11)."""

from __future__ import annotations

import argparse


def cmd_api(args: argparse.Namespace) -> int:
    import os

    from spoold.config import load_config
    from spoold.service.logs import setup_logging
    from spoold.spool.permissions import SPOOL_UMASK

    os.umask(SPOOL_UMASK)  # what the API writes in the spool is for the spool's group, as the daemon's
    config = load_config(args.config)
    setup_logging(config.logging.level, config.logging.format)
    try:
        from spoold.api.server import serve
    except ImportError as exc:  # fastapi / uvicorn / python-multipart / msgspec come with vLLM, or spoold[api]
        from spoold.errors import SpooldError

        raise SpooldError(f"spoold api needs {exc.name} (pip install 'spoold[api]')") from None
    return serve(config)
