"""User errors: the planner's declared exceptions for bad input, impossible requests and plans that do
not fit. The command line turns exactly these (and hardware's and costmodels' own) into one line on
stderr and exit code 2; anything else is a bug and ends in a traceback and exit code 1.

Every class derives from ValueError too, so API users may catch either.
"""
from __future__ import annotations

from costmodels.model import ModelError
from costmodels.serving import ServingError
from costmodels.strategy import StrategyError
from hardware import HardwareError


class PlannerError(ValueError):
    """Base of the planner's user errors: the message names the bad value and what would work."""


# The declared user errors of the whole project (hardware, costmodels, planner), for the CLI and tests.
USER_ERRORS: tuple[type[Exception], ...] = (HardwareError, ModelError, StrategyError, ServingError, PlannerError)


def one_line(e: BaseException) -> str:
    """The first line of an error's message (its type name when it has none)."""
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__
