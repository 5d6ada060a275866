"""The installed distribution's version (``0.0.0+unknown`` when run from a source tree without installation)."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("scoresde")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
