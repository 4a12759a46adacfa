"""The console and log file of the Hydra commands (``configs/hydra/default.yaml``'s ``job_logging``).

Log lines reach the console through ``tqdm.write``, so progress bars stay intact. A record
marked ``extra={"file_only": True}`` (a traceback, the full config) goes to the run's log
file only; one marked ``extra={"console_only": True}`` (the one-line form of an error
whose traceback is in the file) to the console only.
"""
from __future__ import annotations

import logging


class TqdmLoggingHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write`` so progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # pragma: no cover - mirrors logging.Handler.handleError
            self.handleError(record)


class ConsoleFilter(logging.Filter):
    """Keeps records marked ``extra={"file_only": True}`` (tracebacks, the full config) off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


class FileFilter(logging.Filter):
    """Keeps records marked ``extra={"console_only": True}`` out of the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "console_only", False)
