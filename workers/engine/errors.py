"""The one exception type for invalid user input: it names every field at fault, at once."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class SpecError(ValueError):
    """An invalid spec or request field, or several.

    `errors` is the list of ``(field, message)`` pairs, each `field` the dotted path of an
    offending field (e.g. ``model.nodes[2] (h2).inputs``) so the service can hand it back to
    the user verbatim; `field` and `message` are the first pair. ``str()`` is one
    ``field: message`` line per error.
    """

    def __init__(self, field: str, message: str = "", errors: Sequence[tuple[str, str]] | None = None):
        self.errors: list[tuple[str, str]] = list(errors) if errors else [(field, message)]
        self.field, self.message = self.errors[0]
        super().__init__("\n".join(f"{f}: {m}" for f, m in self.errors))

    @classmethod
    def of(cls, errors: Sequence[tuple[str, str]]) -> SpecError:
        """One error listing all of `errors` (fields already complete)."""
        err = SpecError.__new__(cls)
        SpecError.__init__(err, *errors[0], errors=errors)
        return err

    def __reduce__(self):  # survives pickling, e.g. when Ray carries it between processes
        return (_restore, (type(self), self.errors))


def _restore(cls: type[SpecError], errors: list[tuple[str, str]]) -> SpecError:
    return cls.of(errors)


SHOW_CHARS = 64


def show(value: object, n: int = SHOW_CHARS) -> str:
    """``repr`` of a client value for an error message, clipped to `n` characters.

    A spec can carry a string or structure of any size; an error must never echo it whole.
    A string is cut before `repr`, so even a huge one costs nothing.
    """
    if isinstance(value, str):
        return repr(value[:n]) + (f"... ({len(value)} characters)" if len(value) > n else "")
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits refuses to become a string
        return f"an integer of {value.bit_length()} bits" if isinstance(value, int) else type(value).__name__
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def unknown_field(key: object, allowed: Iterable[str], where: str = "") -> str:
    """The one wording of "no such field": what is allowed (`where`: e.g. ``for 'blobs'``),
    and the closest allowed name when the key looks like a typo."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(str(key)[:SHOW_CHARS], allowed, n=1) if isinstance(key, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(allowed) or "(none)"
    return f"unknown field{hint}; allowed{' ' + where if where else ''}: {listed}"


def key_path(path: str, key: object) -> str:
    """``path.key``, the key clipped when a client sent a huge one."""
    text = str(key)
    return f"{path}.{text if len(text) <= SHOW_CHARS else show(text)}"
