"""``instahide-server`` (``python -m instahide_server``): flags and ``INSTAHIDE_*`` variables → a server.

The flags come from ``settings.SETTINGS``, one per setting, each with its variable (``--max-message-bytes``
↔ ``INSTAHIDE_MAX_MESSAGE_BYTES``); a flag wins over its variable, a variable over the default. Exits 0 after a
clean SIGTERM/SIGINT drain, 2 on unusable settings (an unusable state directory is not one: it disables audits
only).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from instahide_server.config import ConfigError, ServerConfig
from instahide_server.settings import SECTIONS, SETTINGS
from instahide_server.tls import load_tls

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    """The command line, a group per settings section; every default is None so the config can tell "not
    given" from a value (the defaults live in the table, and ``--help`` shows them)."""
    parser = argparse.ArgumentParser(
        prog="instahide-server",
        description="Privacy transforms (InstaHide) and leakage audits over gRPC. Each flag also reads "
                    "INSTAHIDE_<FLAG> (e.g. INSTAHIDE_PORT); docs/operations.md explains them.")
    for section, title in SECTIONS.items():
        group = parser.add_argument_group(title)
        for setting in (s for s in SETTINGS if s.section == section):
            text = f"{setting.help} (default: {setting.shown_default}; {setting.env})"
            group.add_argument(setting.flag, dest=setting.name, metavar=setting.metavar or setting.name.upper(),
                               help=text.replace("%", "%%"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse settings, configure logging and serve until SIGTERM/SIGINT."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = ServerConfig.from_args_and_env(args)
        load_tls(config.transport)  # fail now, before the slow imports, on a missing or mismatched certificate or key
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=config.log_level, format=_LOG_FORMAT, stream=sys.stderr)
    logging.getLogger(__name__).info("starting with %s", config)

    from instahide_server.server import serve  # heavy imports (torch) after the flags are checked

    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
