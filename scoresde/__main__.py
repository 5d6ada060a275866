"""``python -m scoresde``: the command line of :mod:`scoresde.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
