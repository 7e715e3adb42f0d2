"""Shared command-line helpers: logging set-up and error reporting."""
from __future__ import annotations

import logging
import sys

# Shell convention for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False) -> None:
    """Log INFO (DEBUG with --verbose) to stderr, once per process."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    elif verbose:
        root.setLevel(logging.DEBUG)


def add_verbose_flag(parser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")


def run_command(function, args) -> int:
    """Run ``function(args)``; turn user errors into one logged message and exit code 1."""
    from ortho_nnd.training.checkpoint import CheckpointError
    from ortho_nnd.training.nonfinite import NonFiniteLossError

    try:
        result = function(args)
    except (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError) as error:
        logging.getLogger("ortho_nnd").error("%s", error)
        return 1
    except KeyboardInterrupt:
        # Outputs are written atomically, so an interrupted run leaves finished files and nothing half-written.
        logging.getLogger("ortho_nnd").error("Interrupted. Finished outputs are kept; run the command again (with --c for training) to resume.")
        return EXIT_INTERRUPTED
    return int(result or 0)
