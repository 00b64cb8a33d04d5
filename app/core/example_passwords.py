"""The passwords the API's examples print (the explorer at ``/docs``, ``/openapi.json``, the
reference): anyone can read them, so an account that took one, by running an example against a
real deployment, could be logged into by anyone. Where the settings say so
(``auth.refuse_example_passwords``: on, except in development and test, whose fresh backends
run the examples as shown), a password equal to one of them is refused, by the API and the CLI
alike. ``refuse_example_passwords`` applies the setting when the app or the CLI starts."""

from __future__ import annotations

EXAMPLE_PASSWORD = "a-long-passphrase"  # noqa: S105 - published on purpose, refused below
EXAMPLE_NEW_PASSWORD = "an-even-longer-passphrase"  # noqa: S105 - likewise
EXAMPLE_PASSWORDS = frozenset({EXAMPLE_PASSWORD, EXAMPLE_NEW_PASSWORD})
PROBLEM = "this password is printed in the API's published examples; choose another"

_refused: set[str] = set()


def refuse_example_passwords(refuse: bool) -> None:
    """Refuse the published example passwords from now on (or accept them again)."""
    _refused.clear()
    if refuse:
        _refused.update(EXAMPLE_PASSWORDS)


def example_password_problem(password: str) -> str | None:
    """Why ``password`` may not be set here (None when it may)."""
    return PROBLEM if password in _refused else None
