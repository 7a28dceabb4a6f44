"""Plain-text forms of the renderers (pvdbg/views/render.py), for the CLI and scripts.

Each view is written once, as formatted text; these functions only drop the styles.
"""
from __future__ import annotations

from ..trace import TraceLog
from . import gather, render


def hypercall_table(trace: TraceLog, count: int = 20, filt: str | None = None) -> str:
    """The last `count` hypercalls as a table; multicall entries indented.  `filt`
    matches a name or caller substring, or a result as shown."""
    selected = render.select_hypercalls(trace, render.HypercallFilter(text=filt), count or None)
    return render.to_plain(render.hypercall_table(selected))


def vcpu_summary(session, vcpu_id: int) -> str:
    return render.to_plain(render.vcpu_text(gather.vcpu_state(session, vcpu_id)))


def stop_line(stop, symbol: str | None = None) -> str:
    return render.to_plain(render.stop_notice(stop, symbol, None)).rstrip("\n")


__all__ = ["hypercall_table", "vcpu_summary", "stop_line"]
