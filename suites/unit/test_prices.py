"""The price table: the bundled data file, lookups, overrides and exact Decimal arithmetic."""

from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources

import pytest

from app.services.providers import ModelPrice, PriceTable


@pytest.fixture
def table() -> PriceTable:
    return PriceTable.load()


def test_the_bundled_file_is_versioned_and_in_usd(table: PriceTable) -> None:
    raw = json.loads(
        resources.files("app.services.providers").joinpath("prices.json").read_text("utf-8")
    )
    assert table.version == raw["version"] == "2026-11-01"
    assert table.currency == "USD"
    assert set(table.models) == set(raw["models"])
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini", "llama3.1:8b"} <= set(
        table.models
    )
    assert table.overridden == frozenset()
    for entry in raw["models"].values():  # prices are strings, so no float ever parses them
        assert all(isinstance(value, str) for value in entry.values())


def test_known_model_cost(table: PriceTable) -> None:
    assert table.known("gpt-4o-mini")
    assert table.price("gpt-4o-mini") == ModelPrice(Decimal("0.15"), Decimal("0.60"))
    # 1,000 in at $0.15/M + 2,000 out at $0.60/M = 0.00015 + 0.0012
    assert table.cost("gpt-4o-mini", 1_000, 2_000) == Decimal("0.00135")
    assert table.cost("gpt-4o", 1_000_000, 1_000_000) == Decimal("12.50")
    assert table.cost("gpt-4o", 0, 0) == 0


def test_local_models_are_free(table: PriceTable) -> None:
    assert table.known("llama3.1:8b")
    assert table.cost("llama3.1:8b", 50_000, 50_000) == 0


def test_unknown_models_cost_nothing_and_say_so(table: PriceTable) -> None:
    assert not table.known("mystery-model")
    assert table.price("mystery-model") is None
    cost = table.cost("mystery-model", 10_000, 10_000)
    assert cost == Decimal(0)
    assert isinstance(cost, Decimal)


def test_snapshot_and_gateway_names_resolve(table: PriceTable) -> None:
    assert table.price("gpt-4o-mini-2024-07-18") == table.price("gpt-4o-mini")
    assert table.price("openai/gpt-4.1") == table.price("gpt-4.1")
    assert table.price("openrouter/openai/gpt-4.1-mini-2025-04-14") == table.price("gpt-4.1-mini")
    assert not table.known("openai/unknown")


def test_decimal_arithmetic_is_exact_for_huge_counts(table: PriceTable) -> None:
    tokens = 123_456_789_012_345_678
    cost = table.cost("gpt-4o-mini", tokens, tokens)
    assert cost == Decimal(tokens) * Decimal("0.75") / Decimal(1_000_000)
    assert cost == Decimal("92592591759.2592585")
    assert table.cost("gpt-4.1-mini", 1, 1) == Decimal("0.000002")
    many = sum((table.cost("gpt-4o-mini", 1, 1) for _ in range(1_000)), Decimal(0))
    assert many == Decimal("0.00075")  # no float drift however many calls are summed


def test_a_cost_finer_than_the_ledger_is_rounded_to_it() -> None:
    table = PriceTable.load({"fine": {"input_per_mtok": "0.123", "output_per_mtok": "0.0005"}})
    assert table.cost("fine", 1, 0) == Decimal("0.00000012")  # 0.000000123
    assert table.cost("fine", 0, 1) == Decimal("0")  # 0.0000000005, half to even
    assert table.cost("fine", 1_000_000, 0) == Decimal("0.123")  # coarser ones: as they are


def test_negative_token_counts_are_refused(table: PriceTable) -> None:
    with pytest.raises(ValueError, match="negative"):
        table.cost("gpt-4o", -1, 0)


def test_overrides_replace_and_add_models() -> None:
    table = PriceTable.load(
        {
            "gpt-4o": {"input_per_mtok": "2.00", "output_per_mtok": 9},
            "gpt-4o-mini": {"output_per_mtok": 0.5},  # partial: input keeps the file's price
            "my-finetune": {"input_per_mtok": 0.1, "output_per_mtok": Decimal("0.2")},
        }
    )
    assert table.price("gpt-4o") == ModelPrice(Decimal("2.00"), Decimal(9))
    assert table.price("gpt-4o-mini") == ModelPrice(Decimal("0.15"), Decimal("0.5"))
    assert table.price("my-finetune") == ModelPrice(Decimal("0.1"), Decimal("0.2"))  # via str
    assert table.cost("my-finetune", 3_000_000, 0) == Decimal("0.3")
    assert table.overridden == frozenset({"gpt-4o", "gpt-4o-mini", "my-finetune"})
    assert table.version == "2026-11-01"
    assert PriceTable.load().price("gpt-4o") == ModelPrice(Decimal("2.50"), Decimal("10.00"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"new-model": {"input_per_mtok": "1"}}, r"new-model\.output_per_mtok: required"),
        ({"gpt-4o": {"input_per_mtok": "-1"}}, r"gpt-4o\.input_per_mtok: .* >= 0"),
        ({"gpt-4o": {"input_per_mtok": "cheap"}}, "not a decimal number"),
        ({"gpt-4o": {"input_per_mtok": "NaN"}}, "finite"),
        ({"gpt-4o": {"input_per_mtok": True}}, "decimal string or a number"),
        ({"gpt-4o": {"input_per_mtok": None}}, "decimal string or a number"),
        ({"gpt-4o": {"per_call": "1"}}, "unknown field"),
        ({"gpt-4o": "1.0"}, "expected an object"),
    ],
)
def test_bad_overrides_name_model_and_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PriceTable.load(overrides)
