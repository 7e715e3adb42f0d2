"""Running the ortho_* commands in-process as named pipeline stages.

``run_stage`` calls a command's ``main(argv)`` and turns every way it can fail (an exception, a
non-zero exit code, an argparse ``SystemExit``) into one ``StageError``. The error names the
stage and gives the equivalent shell command, with the ORTHO_* folders in use, so that the
failed stage can be rerun alone.
"""
from __future__ import annotations

import importlib
import logging
import os
import shlex
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Environment variables that a rerun of a stage in a shell needs (see ortho_nnd.paths).
ORTHO_VARIABLES = ("ORTHO_raw", "ORTHO_preprocessed", "ORTHO_results")

# Console script name -> "module:function" of its entry point (the same targets as setup.py).
COMMANDS = {
    "ortho_make_demo_dataset": "ortho_nnd.cli.make_demo_dataset:main",
    "ortho_synthesize_from_labels": "ortho_nnd.cli.synthesize_from_labels:main",
    "ortho_plan_and_preprocess": "ortho_nnd.cli.plan_and_preprocess:main_plan_and_preprocess",
    "ortho_train": "ortho_nnd.cli.train:main",
    "ortho_predict": "ortho_nnd.cli.predict:main",
    "ortho_evaluate": "ortho_nnd.cli.evaluate:main",
    "ortho_summarize": "ortho_nnd.cli.summarize:main",
}


class StageError(RuntimeError):
    """A pipeline stage failed. The message names the stage and the command that reruns it."""


@dataclass(frozen=True)
class StageRecord:
    """Name, shell command and duration of a stage that finished."""

    name: str
    command: str
    seconds: float


def shell_command(command: str, argv: list[str]) -> str:
    """Return the shell line that reruns ``command argv`` with the current ORTHO_* folders."""
    assignments = [f"{name}={shlex.quote(os.environ[name])}" for name in ORTHO_VARIABLES if os.environ.get(name)]
    return " ".join([*assignments, command, *(shlex.quote(str(argument)) for argument in argv)])


def _entry_point(command: str):
    if command not in COMMANDS:
        raise ValueError(f"Unknown command {command!r}; known commands: {sorted(COMMANDS)}.")
    module_name, function_name = COMMANDS[command].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise StageError(
            f"Command {command} is not available ({module_name} failed to import: {error}). "
            "Reinstall ortho_nnd (pip install -e .) and check the installation log."
        ) from error
    return getattr(module, function_name)


def run_stage(name: str, command: str, argv: list, records: list[StageRecord] | None = None) -> StageRecord:
    """Run ``command`` (a console script name from COMMANDS) with ``argv`` in this process.

    Returns the stage record and appends it to ``records`` when given. Raises StageError when
    the command raises, exits through argparse or returns a non-zero exit code.
    """
    arguments = [str(argument) for argument in argv]
    rerun = shell_command(command, arguments)
    main = _entry_point(command)
    logger.info("Stage '%s' starts: %s", name, rerun)
    start = time.perf_counter()

    try:
        exit_code = main(arguments)
    except SystemExit as exit_request:
        # argparse exits with code 2 on invalid arguments; a bare sys.exit() means success.
        exit_code = exit_request.code
    except Exception as error:
        raise StageError(
            f"Stage '{name}' failed: {type(error).__name__}: {error}\n"
            f"Rerun this stage alone with:\n  {rerun}"
        ) from error

    if exit_code not in (0, None):
        raise StageError(
            f"Stage '{name}' failed with exit code {exit_code}; the log lines above give the cause.\n"
            f"Rerun this stage alone with:\n  {rerun}"
        )

    record = StageRecord(name=name, command=rerun, seconds=time.perf_counter() - start)
    logger.info("Stage '%s' finished in %.1f s", name, record.seconds)
    if records is not None:
        records.append(record)
    return record


def run_script(run, parser, argv: list[str] | None, script_logger: logging.Logger) -> int:
    """Parse ``argv``, run ``run(args)`` and turn a failed stage or user error into one log line and status 1."""
    from ortho_nnd.cli.common import configure_logging

    args = parser.parse_args(argv)
    configure_logging()
    try:
        run(args)
    except (StageError, ValueError, FileNotFoundError, FileExistsError) as error:
        script_logger.error("%s", error)
        return 1
    return 0
