"""Colours for the REPL: the 16 ANSI colours only (the terminal's palette decides the
shade, so dark and light themes both stay readable), no background colours except the
status line, which uses reverse video.  NO_COLOR (https://no-color.org) or TERM=dumb
turn colour off; bold, underline and reverse remain for NO_COLOR, nothing for dumb."""
from __future__ import annotations

import os
from collections.abc import Mapping

from prompt_toolkit.output import ColorDepth
from prompt_toolkit.styles import Style

# class name -> style; every renderer's `class:` names are listed here.
STYLE_RULES: dict[str, str] = {
    "prompt": "bold",
    "prompt.running": "bold ansiyellow",
    "header": "bold underline",
    "label": "bold",
    "dim": "ansibrightblack",
    "address": "ansicyan",
    "symbol": "ansigreen",
    "source": "ansibrightblack italic",
    "location": "ansimagenta",
    "name": "bold ansiblue",
    "value": "",
    "ok": "ansigreen",
    "error": "bold ansired",
    "warning": "ansiyellow",
    "masked": "ansiyellow",
    "unmasked": "ansigreen",
    "pending": "bold ansired",
    "ro": "ansigreen",
    "rw": "ansiyellow",
    "pinned": "bold",
    "reserved": "ansimagenta",
    "pc": "bold reverse",
    "breakpoint": "bold ansired",
    "stop": "bold ansiyellow",
    "console": "",
    "bytes": "ansibrightblack",
    "xen": "ansimagenta",
    "status": "reverse",
    "status.state.running": "reverse bold ansiyellow",
    "status.state.stopped": "reverse bold",
    "status.state.dead": "reverse bold ansired",
}

_ATTRIBUTES = ("bold", "underline", "italic", "reverse", "noreverse", "nobold", "blink")


def color_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """False when NO_COLOR is set (any value but empty) or the terminal is dumb."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR", ""):
        return False
    return env.get("TERM", "") != "dumb"


def is_dumb_terminal(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("TERM", "") in ("dumb", "unknown")


def _without_colors(rule: str) -> str:
    return " ".join(word for word in rule.split() if word in _ATTRIBUTES)


def repl_style(color: bool = True) -> Style:
    rules = STYLE_RULES if color else {k: _without_colors(v) for k, v in STYLE_RULES.items()}
    return Style.from_dict({name: rule for name, rule in rules.items()})


def color_depth(color: bool) -> ColorDepth:
    return ColorDepth.DEPTH_4_BIT if color else ColorDepth.MONOCHROME


__all__ = ["STYLE_RULES", "color_enabled", "is_dumb_terminal", "repl_style", "color_depth"]
