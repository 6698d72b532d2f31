"""What a person sees: dldc's log messages on stderr, and errors as one line.

The CLI sets logging up once per process (:func:`configure_logging`) and turns an error a user can
meet into one line (:func:`one_line_error`); ``-v`` keeps the traceback.
"""

from __future__ import annotations

import logging

# Libraries that configure their own loggers or chatter at INFO (MLflow's "Creating initial
# MLflow database tables" on every stage): shown only with -v.
_LIBRARY_LOGGERS = ("mlflow", "alembic", "urllib3", "httpx", "filelock", "huggingface_hub", "onnxruntime")


def configure_logging(verbosity: int) -> None:
    """Set up logging once for the process: dldc's own messages on stderr through rich.

    ``verbosity`` 0 shows dldc's INFO messages (resuming, provider choice) and warnings of
    other libraries' loggers; 1 (``-v``) adds dldc's DEBUG, libraries' INFO and Python
    warnings; -1 (``-q``) shows warnings and errors only. Python ``warnings`` from libraries
    (MLflow's schema hints, deprecations) are nothing a user can act on, so they are hidden
    unless ``-v``.
    """
    import os

    from rich.console import Console
    from rich.logging import RichHandler

    # MLflow installs its own handler when it is imported (lazily, after this runs); keep ours.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    logging.getLogger("dldc").setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
        library.handlers[:] = []  # MLflow adds its own stream handler; one format for everything
        library.propagate = True
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbosity > 0 else logging.ERROR)


def one_line_error(err: BaseException) -> str:
    """A message for an error that reached the command line, without a traceback.

    Example:
        >>> one_line_error(OSError(28, "No space left on device", "/data/scores/part-0003.parquet"))
        'No space left on device: /data/scores/part-0003.parquet'
        >>> one_line_error(ValueError("manifest has 0 pairs"))
        'manifest has 0 pairs'
    """
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        also = f" -> {err.filename2}" if getattr(err, "filename2", None) else ""
        return f"{err.strerror}{where}{also}"
    return str(err) or type(err).__name__
