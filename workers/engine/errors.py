"""The one exception type for invalid user input: it always names the field."""


class SpecError(ValueError):
    """An invalid spec or request field.

    `field` is the dotted path of the offending field (e.g. ``model.nodes[2] (h2).inputs``)
    so the service can hand it back to the user verbatim.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # survives pickling, e.g. when Ray carries it between processes
        return (type(self), (self.field, self.message))


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
