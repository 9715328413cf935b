"""`python -m batchrun.emulator --port 0 [--rpm N ...]`: serve until SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import sys

from .config import FlagError, config_from_argv
from .process import watch_parent
from .server import serve


def main(argv: list[str] | None = None) -> None:
    try:
        config, host, port = config_from_argv(argv)
    except FlagError as e:
        print(f"batchrun emulator: error: {e} (`batchrun emulator --help` lists the flags)", file=sys.stderr)
        sys.exit(2)
    watch_parent()  # started by EmulatorProcess (--emulate, tests): stop when that process dies
    gc.freeze()  # the imports live as long as the process: full collections need not walk them
    serve(config, host, port)


if __name__ == "__main__":
    main(sys.argv[1:])
