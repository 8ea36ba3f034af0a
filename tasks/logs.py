"""Where warnings go: the Prefect run's logger inside a flow or task run, so they reach the UI;
the module's own logger outside one (plain function calls, tests, the command line)."""

from __future__ import annotations

import logging


def run_logger(name: str) -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)
