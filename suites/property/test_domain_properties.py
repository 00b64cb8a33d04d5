"""Properties of account-name keys (``app.services.accounts.name_key``)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from app.models import Account
from app.schemas.accounts import AccountCreate
from app.services.accounts import name_key

# Every character str.split() treats as whitespace.
WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
words = st.text(
    alphabet=st.characters(exclude_characters=WHITESPACE, exclude_categories=("Cs",)),
    min_size=1,
    max_size=10,
)
gaps = st.text(alphabet=WHITESPACE, min_size=1, max_size=4)
# Letters whose upper and lower case Unicode folds to the same letter (Latin-1 letters; the
# Turkish dotless i, for one, is a different letter from I under default case folding).
latin_letters = st.characters(codec="latin-1", categories=("Lu", "Ll"))


@given(name=st.text(max_size=60))
def test_name_key_is_idempotent(name: str) -> None:
    assert name_key(name_key(name)) == name_key(name)


@given(name=st.text(max_size=60))
def test_name_key_has_no_stray_whitespace(name: str) -> None:
    key = name_key(name)
    assert key == key.strip()
    assert "  " not in key
    assert all(not c.isspace() or c == " " for c in key)


@given(parts=st.lists(words, min_size=1, max_size=5), data=st.data())
def test_name_key_ignores_spacing(parts: list[str], data: st.DataObject) -> None:
    spaced = data.draw(gaps | st.just("")) + parts[0]
    for part in parts[1:]:
        spaced += data.draw(gaps) + part
    spaced += data.draw(gaps | st.just(""))
    assert name_key(spaced) == name_key(" ".join(parts))


@given(
    letters=st.lists(st.tuples(latin_letters, st.booleans()), min_size=1, max_size=30),
)
def test_name_key_ignores_case(letters: list[tuple[str, bool]]) -> None:
    plain = "".join(letter for letter, _ in letters)
    mixed = "".join(letter.upper() if up else letter.lower() for letter, up in letters)
    assert name_key(mixed) == name_key(plain)
    assert name_key(plain.upper()) == name_key(plain.lower())


@given(name=st.text(min_size=1, max_size=120).filter(lambda n: n.strip()))
@example(name="ß" * 120)
@example(name="ﬃ" * 50)
def test_name_key_fits_its_column(name: str) -> None:
    """Any name the API accepts has a key the database can store. PostgreSQL refuses a
    value longer than the column (SQLite does not check), so a longer key is a 500 there."""
    accepted = AccountCreate(name=name, owner_email="o@example.com", owner_password="x" * 8)
    limit = Account.__table__.c.name_key.type.length
    assert len(name_key(accepted.name)) <= limit, (
        f"name of {len(accepted.name)} characters has a key of {len(name_key(accepted.name))}"
    )
