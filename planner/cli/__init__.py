"""The `plan` command line: planner.cli.main holds the group and its commands, planner.cli.run the
whole-run commands (estimate, compare), planner.cli.common what they share."""
from planner.cli import run
from planner.cli.main import cli, main

cli.add_command(run.estimate)
cli.add_command(run.compare)

__all__ = ["cli", "main"]
