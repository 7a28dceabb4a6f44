"""Tab completion for the REPL: command names and aliases, then each command's argument
kinds (guest symbols, hypercall names, sub-commands), from callables so the completer
never holds the engine."""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

MAX_COMPLETIONS = 200


def _prefixed(sorted_words: Sequence[str], prefix: str) -> Iterable[str]:
    """Words of a sorted sequence that start with `prefix`, in order."""
    start = bisect_left(sorted_words, prefix)
    for word in sorted_words[start:start + MAX_COMPLETIONS * 4]:
        if not word.startswith(prefix):
            return
        yield word


class ReplCompleter(Completer):
    """`commands()` maps each name and alias to its argument kinds ("@symbol",
    "@hypercall", "@command", or literal words); `symbols()` and `hypercalls()` give
    sorted names.  After the word `hypercall`, hypercall names are offered."""

    def __init__(self, commands: Callable[[], Mapping[str, tuple[str, ...]]],
                 symbols: Callable[[], Sequence[str]],
                 hypercalls: Callable[[], Sequence[str]]) -> None:
        self._commands = commands
        self._symbols = symbols
        self._hypercalls = hypercalls

    def get_completions(self, document: Document, complete_event: CompleteEvent):
        text = document.text_before_cursor
        words = text.split()
        if not words or (len(words) == 1 and not text.endswith(" ")):
            prefix = words[0] if words else ""
            for name in sorted(self._commands()):
                if name.startswith(prefix):
                    yield Completion(name, -len(prefix))
            return
        commands = self._commands()
        head = words[0].split("/", 1)[0]
        kinds = commands.get(head)
        if kinds is None:
            return
        word = "" if text.endswith(" ") else words[-1]
        previous = words[-1] if text.endswith(" ") else (words[-2] if len(words) > 1 else "")
        yield from self._complete_word(word, previous, kinds, commands)

    def _complete_word(self, word: str, previous: str, kinds: tuple[str, ...],
                       commands: Mapping[str, tuple[str, ...]]):
        key, eq, value = word.partition("=")
        if eq:                                   # name=..., caller=...
            source = {"name": self._hypercalls, "caller": self._symbols}.get(key)
            if source is not None:
                for name in _prefixed(source(), value):
                    yield Completion(name, -len(value))
            return
        count = 0
        if previous == "hypercall" or "@hypercall" in kinds:
            for name in _prefixed(self._hypercalls(), word):
                yield Completion(name, -len(word))
                count += 1
            if previous == "hypercall":
                return
        for literal in kinds:
            if not literal.startswith("@") and literal.startswith(word):
                yield Completion(literal, -len(word))
        if "@command" in kinds:
            for name in sorted(commands):
                if name.startswith(word):
                    yield Completion(name, -len(word))
        if "@symbol" in kinds and word and not word.startswith(("$", "0x")) \
                and not word[0].isdigit():
            for name in _prefixed(self._symbols(), word):
                if count >= MAX_COMPLETIONS:
                    return
                yield Completion(name, -len(word))
                count += 1


__all__ = ["ReplCompleter"]
