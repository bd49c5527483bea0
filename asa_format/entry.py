"""The console entry points ``asa`` and ``asa-convert``: signal handlers first.

A person may press Ctrl-C (or a supervisor send SIGTERM) while the command
is still importing its dependencies. The handlers are installed here, before
anything heavy is imported (this module and ``asa_format/__init__`` import
only the standard library), so that such a signal ends the command with the
exit code of the convention (130 for SIGINT, 143 for SIGTERM) and one line on
stderr, never a traceback; with ``--json``, the one JSON document on stdout
too. Nothing has been written before the command runs, so leaving at once is
safe. ``asa_format.cli.support.run_main`` then replaces these handlers by ones that
raise, so that a running command cleans up what it wrote.
"""

from __future__ import annotations

import os
import signal
import sys

TYPE_CHECKING = False  # not ``typing`` (3 ms of start-up): type checkers treat the name as true
if TYPE_CHECKING:
    from types import FrameType
    from typing import NoReturn

__all__ = ["asa", "asa_convert", "install_startup_handlers"]

_WORDS = {signal.SIGINT: "interrupted (SIGINT)", signal.SIGTERM: "terminated (SIGTERM)"}
_command = "asa"


def _json_requested(args: list[str]) -> bool:
    return "--json" in args[: args.index("--")] if "--" in args else "--json" in args


def _leave(signum: int, frame: FrameType | None) -> NoReturn:
    word = _WORDS.get(signal.Signals(signum), f"signal {signum}")
    if _json_requested(sys.argv[1:]):
        import json  # the standard library only

        from asa_format import __version__

        doc = {
            "asa_format_version": __version__,
            "command": _command,
            "ok": False,
            "summary": {"checked": 1, "ok": 0, "failed": 1},
            "results": [
                {
                    "path": None,
                    "ok": False,
                    "problems": [
                        {
                            "code": "INTERRUPTED",
                            "file": None,
                            "message": f"{word} while starting; nothing was written",
                            "hint": None,
                        }
                    ],
                    "warnings": [],
                }
            ],
        }
        os.write(1, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii"))
    os.write(2, f"{word} while starting; nothing was written\n".encode("ascii"))
    os._exit(128 + signum)


def install_startup_handlers(command: str = "asa") -> None:
    """SIGINT and SIGTERM end the process at once, quietly (only until ``run_main`` runs).

    An ignored SIGINT stays ignored, as Python itself leaves it.
    """
    global _command
    _command = command
    for sig in (signal.SIGINT, signal.SIGTERM):
        if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # started with SIGINT ignored (nohup, a background job): keep it so
        signal.signal(sig, _leave)


def _command_of(args: list[str]) -> str:
    return next((a for a in args if not a.startswith("-")), "asa")


def asa() -> NoReturn:
    install_startup_handlers(_command_of(sys.argv[1:]))
    from asa_format.cli import main

    main()
    raise SystemExit(0)  # pragma: no cover - main() always exits


def asa_convert() -> NoReturn:
    install_startup_handlers("convert")
    from asa_format.cli.convert import main

    main()
    raise SystemExit(0)  # pragma: no cover - main() always exits
