"""Email addresses, checked the one way the API and the CLI share: by their syntax
(email-validator; Renum sends no mail to them, so a domain need not be deliverable), normalized,
with the special-use domains (RFC 6761: ``local``, ``test``, ...) that the deployment accepts.

``accept_special_use_domains`` sets those from the settings when the app or the CLI starts
(``auth.special_use_email_domains``; development and test accept ``local``, the domain of the
default first admin ``admin@renum.local``). email-validator reads its list of special-use
names when it checks an address, so the accepted ones are taken off that list (the library's
documented way to allow some).
"""

from __future__ import annotations

from collections.abc import Iterable

import email_validator

# Every special-use name the library knows, as it shipped (the list below is edited in place).
SPECIAL_USE_DOMAINS: tuple[str, ...] = tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)


def accept_special_use_domains(domains: Iterable[str]) -> None:
    """Accept addresses under ``domains`` (each one of ``SPECIAL_USE_DOMAINS``) from now on,
    and refuse those under the other special-use names."""
    accepted = set(domains)
    email_validator.SPECIAL_USE_DOMAIN_NAMES[:] = [
        name for name in SPECIAL_USE_DOMAINS if name not in accepted
    ]


def normalized_email(value: str) -> str:
    """``value`` normalized (the domain lower-cased); ``EmailNotValidError`` saying why not."""
    checked = email_validator.validate_email(
        value,
        check_deliverability=False,
        # Where `test` is accepted, so is the bare `user@test` (the library's test mode).
        test_environment="test" not in email_validator.SPECIAL_USE_DOMAIN_NAMES,
    )
    return checked.normalized
