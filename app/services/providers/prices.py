"""The price table: what a model call costs, from a versioned data file plus settings overrides.

``prices.json`` beside this module lists, per model, the price of a million input and of a
million output tokens as decimal strings, under a ``version`` the ledger can record. Money is
``Decimal`` throughout; a float never touches it (float overrides go through ``str`` first).

Lookup of a model name tries, in order: the exact name; the name without a ``-YYYY-MM-DD``
snapshot suffix (OpenAI answers ``gpt-4o-mini-2024-07-18`` to a request for ``gpt-4o-mini``);
the part after the last ``/`` (gateway names such as ``openai/gpt-4o``). A model found by none
is unknown: it costs 0 and :meth:`PriceTable.known` says False, so the caller can flag it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any

PRICES_FILE = "prices.json"
_MTOK = Decimal(1_000_000)
# The ledger keeps costs to 8 decimal places (its Money columns: Numeric(18, 8)).
LEDGER_DECIMALS = 8
_LEDGER_STEP = Decimal(1).scaleb(-LEDGER_DECIMALS)
_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_FIELDS = ("input_per_mtok", "output_per_mtok")

Override = Mapping[str, str | float | int | Decimal]


@dataclass(frozen=True)
class ModelPrice:
    input_per_mtok: Decimal
    output_per_mtok: Decimal


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f"{where}: a price must be a decimal string or a number")
    try:
        price = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{where}: {value!r} is not a decimal number") from None
    if not price.is_finite() or price < 0:
        raise ValueError(f"{where}: a price must be a finite number >= 0")
    return price


def _model_price(name: str, entry: Any, base: ModelPrice | None = None) -> ModelPrice:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{name}: expected an object with {' and '.join(_FIELDS)}")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {', '.join(unknown)}")
    values: dict[str, Decimal] = {}
    for field in _FIELDS:
        if field in entry:
            values[field] = _decimal(entry[field], f"{name}.{field}")
        elif base is not None:
            values[field] = getattr(base, field)
        else:
            raise ValueError(f"{name}.{field}: required for a model not in the price table")
    return ModelPrice(**values)


@lru_cache(maxsize=1)
def _bundled() -> tuple[str, str, dict[str, ModelPrice]]:
    text = resources.files(__package__).joinpath(PRICES_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    models = {name: _model_price(name, entry) for name, entry in data["models"].items()}
    return str(data["version"]), str(data["currency"]), models


class PriceTable:
    """Prices per model; ``cost`` turns a call's token counts into money."""

    def __init__(
        self,
        version: str,
        currency: str,
        models: Mapping[str, ModelPrice],
        overridden: frozenset[str] = frozenset(),
    ) -> None:
        self._version = version
        self._currency = currency
        self._models = MappingProxyType(dict(models))
        self._overridden = overridden

    @classmethod
    def load(cls, overrides: Mapping[str, Override] | None = None) -> PriceTable:
        """The bundled table, with ``overrides`` replacing or adding models.

        An override of a listed model may give one price and keep the other; a new model needs
        both. Raises ValueError naming the model and field of a bad override.
        """
        version, currency, bundled = _bundled()
        models = dict(bundled)
        for name, entry in (overrides or {}).items():
            models[name] = _model_price(name, entry, base=bundled.get(name))
        return cls(version, currency, models, overridden=frozenset(overrides or ()))

    @property
    def version(self) -> str:
        """The data file's version (record it with each ledger entry)."""
        return self._version

    @property
    def overridden(self) -> frozenset[str]:
        """Names of the models whose prices came from settings rather than the data file."""
        return self._overridden

    @property
    def currency(self) -> str:
        return self._currency

    @property
    def models(self) -> Mapping[str, ModelPrice]:
        return self._models

    def price(self, model: str) -> ModelPrice | None:
        """The price entry ``model`` resolves to (see the module docstring), or None."""
        found = self._models.get(model)
        if found is None:
            found = self._models.get(_SNAPSHOT_SUFFIX.sub("", model))
        if found is None and "/" in model:
            return self.price(model.rsplit("/", 1)[1])
        return found

    def known(self, model: str) -> bool:
        return self.price(model) is not None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> Decimal:
        """Exact cost of one call in :attr:`currency`, to the ledger's 8 decimal places (as it
        is stored: an override priced finer than that would make the steps' costs stop adding
        up to the stored totals); ``Decimal(0)`` for an unknown model."""
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("token counts must not be negative")
        price = self.price(model)
        if price is None:
            return Decimal(0)
        with localcontext() as exact:
            exact.prec = 60
            total = input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok
            cost = total / _MTOK
            exponent = cost.as_tuple().exponent
            if isinstance(exponent, int) and exponent < -LEDGER_DECIMALS:
                cost = cost.quantize(_LEDGER_STEP, rounding=ROUND_HALF_EVEN)
            return cost
