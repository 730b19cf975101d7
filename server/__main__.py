"""``python -m sluice.server`` is the ``sluice`` command."""

from sluice.server.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
