"""Key bindings of the REPL: Ctrl-C stops a running guest (or clears the line), Ctrl-D
on an empty line exits.  The REPL is reached only through the two callables given."""
from __future__ import annotations

from collections.abc import Callable

from prompt_toolkit.key_binding import KeyBindings


def load_repl_bindings(is_running: Callable[[], bool],
                       stop_guest: Callable[[], None]) -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("c-c")
    def _interrupt(event) -> None:
        if is_running():
            stop_guest()
        else:
            event.current_buffer.reset()

    @bindings.add("c-d")
    def _eof(event) -> None:
        buffer = event.current_buffer
        if buffer.text:
            buffer.delete()
        else:
            event.app.exit(exception=EOFError)

    return bindings


def load_wait_bindings(stop_guest: Callable[[], None]) -> KeyBindings:
    """While the REPL waits in the foreground for the guest to stop."""
    bindings = KeyBindings()

    @bindings.add("c-c")
    @bindings.add("c-d")
    def _stop(event) -> None:
        stop_guest()

    return bindings


__all__ = ["load_repl_bindings", "load_wait_bindings"]
