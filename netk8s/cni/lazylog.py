"""Loggers for the netk8s-cni modules that import :mod:`logging` only when a record is emitted.

The ``netk8s-cni`` executable imports the plugin on every CNI call, and
``import logging`` alone takes 5-8 ms of a run that must stay within ~45 ms.
So the plugin modules log through :func:`get_logger`, whose loggers hand each
record to ``logging.getLogger(name)``, importing logging on first use.

In a long-running process (the kubelet's in-process CNI path) nothing is
configured here and every record goes to logging, which filters by its own
levels as usual. The executable calls :func:`configure` with its level: records
below it are dropped without importing logging, and the first one at or above
it runs the executable's logging set-up first.
"""

from __future__ import annotations

from typing import Callable

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
LEVELS = {"DEBUG": DEBUG, "INFO": INFO, "WARNING": WARNING, "ERROR": ERROR}

_threshold = 0
_setup: Callable[[], None] | None = None


def configure(level: int, setup: Callable[[], None]) -> None:
    """Drop records below ``level`` unseen; run ``setup`` once, before the first record that is emitted."""
    global _threshold, _setup
    _threshold = level
    _setup = setup


def reset() -> None:
    """Back to passing every record to logging (tests, or a process that embeds the executable's main)."""
    global _threshold, _setup
    _threshold = 0
    _setup = None


class Logger:
    """The subset of ``logging.Logger`` the plugin uses."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _log(self, level: int, msg: str, args: tuple[object, ...], exc_info: bool = False) -> None:
        global _setup
        if level < _threshold:
            return
        import logging

        setup, _setup = _setup, None
        if setup is not None:
            setup()
        # stacklevel 3: the record names the plugin's call site, not this wrapper.
        logging.getLogger(self.name).log(level, msg, *args, exc_info=exc_info, stacklevel=3)

    def debug(self, msg: str, *args: object) -> None:
        self._log(DEBUG, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._log(INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._log(WARNING, msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._log(ERROR, msg, args)

    def exception(self, msg: str, *args: object) -> None:
        """ERROR with the exception being handled."""
        self._log(ERROR, msg, args, exc_info=True)


def get_logger(name: str) -> Logger:
    return Logger(name)
