"""pytest plugin (entry point pytest11 "pvdbg"): fixtures for guests on the emulated Xen.

Fixtures:
  pvdbg_session(guest=None, **options) -> Session   built and at the kernel entry, closed
                                                     at teardown (options: SessionOptions
                                                     fields, or options=SessionOptions(...))
  pvdbg_trace(guest=None, max_insns=..., timeout=None, **options) -> CapturedTrace
                                                     the guest run to its end; a list of
                                                     its TraceRecords with .stop,
                                                     .console_text, .session
Assertions (pvdbg.testing, re-exported here): assert_hypercalls, assert_matches_golden,
hc, ANY.  Option: --pvdbg-refresh-golden rewrites golden traces instead of comparing.

pvdbg itself is imported only when a fixture is used, so the plugin costs nothing in
test runs that do not use it.
"""
from __future__ import annotations

from typing import Any

import pytest

from .testing import (ANY, REFRESH_OPTION, _refresh_stack, assert_hypercalls,
                      assert_matches_golden, hc)
from .trace import TraceKind, TraceRecord

DEFAULT_MAX_INSNS = 200_000_000


class CapturedTrace(list):
    """The records of one finished run (a list of TraceRecord) and how it ended."""

    def __init__(self, records, *, stop, console_text: str, session) -> None:
        super().__init__(records)
        self.stop = stop                      # pvdbg.session.Stopped
        self.console_text = console_text
        self.session = session

    @property
    def shutdown_reason(self) -> str | None:
        reason = self.session.shutdown_reason
        return None if reason is None else reason.name

    def records(self, kind: TraceKind | str | None = None,
                name: str | None = None) -> list[TraceRecord]:
        kind = None if kind is None else TraceKind(kind)
        return [r for r in self if (kind is None or r.kind is kind)
                and (name is None or r.name == name)]

    def hypercalls(self, name: str | None = None) -> list[TraceRecord]:
        return self.records(TraceKind.hypercall, name)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pvdbg", "pvdbg (Xen PV guest traces)")
    group.addoption(REFRESH_OPTION, action="store_true", default=False,
                    dest="pvdbg_refresh_golden",
                    help="rewrite golden traces used by assert_matches_golden instead of "
                         "comparing against them")


def pytest_configure(config: pytest.Config) -> None:
    _refresh_stack.append(bool(config.getoption("pvdbg_refresh_golden", False)))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _refresh_stack:
        _refresh_stack.pop()


def _session_options(options: dict[str, Any]):
    from .session import SessionOptions
    given = options.pop("options", None)
    if given is not None and options:
        raise TypeError("pass either options=SessionOptions(...) or option keywords, not both")
    return given if given is not None else SessionOptions(**options)


@pytest.fixture
def pvdbg_session():
    """Factory: pvdbg_session(guest=None, **options) -> a Session at the kernel entry."""
    from .session import Session
    sessions: list[Any] = []

    def make(guest=None, **options):
        session = Session.open(guest, _session_options(options))
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def pvdbg_trace(pvdbg_session):
    """Factory: pvdbg_trace(guest=None, max_insns=..., timeout=None, **options) runs the
    guest to its end (shutdown, crash or blocked) and returns its records."""
    from .session import StopReason

    def run(guest=None, *, max_insns: int | None = DEFAULT_MAX_INSNS,
            timeout: float | None = None, **options) -> CapturedTrace:
        __tracebackhide__ = True
        session = pvdbg_session(guest, **options)
        stop = session.run(max_insns=max_insns, timeout=timeout)
        if stop.reason in (StopReason.limit, StopReason.timeout):
            pytest.fail(f"the guest did not finish: {stop.reason} ({stop.detail}); raise "
                        f"max_insns/timeout, or use pvdbg_session to run part of it",
                        pytrace=False)
        return CapturedTrace(session.trace, stop=stop, console_text=session.console_text,
                             session=session)

    return run


__all__ = ["ANY", "hc", "assert_hypercalls", "assert_matches_golden", "CapturedTrace",
           "pvdbg_session", "pvdbg_trace"]
