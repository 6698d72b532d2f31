"""dldc: Dual Loop Data Cleaning for remote-sensing text-to-image training data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dldc")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
