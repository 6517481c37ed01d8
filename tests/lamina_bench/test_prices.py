"""Price sets: every shipped set is complete and sourced, a broken set file fails with one line."""

import json
import re

import pytest

from lamina_bench.catalog.device_table import BUILTIN
from lamina_bench.catalog.prices import DEFAULT_PRICE_SET, PAPER_PRICE_SET, price_sets, read_price_set
from lamina_bench.errors import UserInputError
from tests.lamina_bench.compare_helpers import cli

GOOD = """
name = "{name}"
provider = "Example Cloud"
date = "2026-01-15"
method = "list price per GPU-hour"
source = "https://example.invalid/pricing"
[prices.H100]
usd_per_hour = 3.5
source = "pricing page, 8-GPU instance / 8"
"""


def test_shipped_sets_are_complete_and_sourced():
    sets = price_sets()
    assert {DEFAULT_PRICE_SET, PAPER_PRICE_SET} <= set(sets) and len(sets) >= 3
    devices = {row["name"] for row in BUILTIN}
    for name, price_set in sets.items():
        assert price_set.name == name and re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", price_set.date)
        assert price_set.prices and set(price_set.prices) <= devices, name
        for device, price in price_set.prices.items():
            assert price.usd_per_hour > 0 and price.source.strip(), (name, device)
            assert price_set.price_source(device).startswith(f"price set {name}: ")
    paper = sets[PAPER_PRICE_SET].prices
    assert (paper["H100"].usd_per_hour, paper["H20"].usd_per_hour) == (11.06, 4.63)  # the paper's Table 1


def test_a_good_set_file_reads(tmp_path):
    path = tmp_path / "example-2026-01.toml"
    path.write_text(GOOD.format(name="example-2026-01"))
    price_set = read_price_set(path)
    assert price_set.label() == "example-2026-01 (Example Cloud, 2026-01-15)"
    assert price_set.prices["H100"].usd_per_hour == 3.5
    assert "no price in price set example-2026-01" in price_set.missing_reason("B200")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('name = "x"', 'name = "y"'), "must equal the file name 'x'"),
        (lambda t: t.replace('"2026-01-15"', '"Jan 2026"'), "must be YYYY-MM or YYYY-MM-DD"),
        (lambda t: t.replace("usd_per_hour = 3.5", "usd_per_hour = -1"), "usd_per_hour must be a positive"),
        (
            lambda t: t.replace("usd_per_hour = 3.5", 'usd_per_hour = "3.5"'),
            "usd_per_hour must be a positive",
        ),
        (
            lambda t: t.replace('source = "pricing page, 8-GPU instance / 8"', ""),
            "'source' must be a non-empty",
        ),
        (lambda t: t.replace('provider = "Example Cloud"', ""), "'provider' must be a non-empty string"),
        (lambda t: t + "currency = 'EUR'\n", "not a price field; valid: usd_per_hour, source, note"),
        (lambda t: "region = 'eu'\n" + t, "unknown key 'region'; valid: name, provider"),
        (lambda t: t.split("[prices.H100]")[0], "needs at least one [prices.DEVICE] table"),
        (lambda t: t + "[[oops", "not valid TOML"),
    ],
)
def test_a_broken_set_file_fails_with_one_line(tmp_path, edit, message):
    path = tmp_path / "x.toml"
    path.write_text(edit(GOOD.format(name="x")))
    with pytest.raises(UserInputError) as info:
        read_price_set(path)
    text = str(info.value)
    assert message in text and "\n" not in text and str(path) in text


def test_hardware_names_its_price_set_in_text_and_json(capsys):
    code, out, _ = cli(capsys, "hardware", "--prices", PAPER_PRICE_SET)
    assert code == 0 and out.startswith(f"prices: {PAPER_PRICE_SET} (Lamina paper")
    code, out, _ = cli(capsys, "hardware", "--json")
    data = json.loads(out)
    assert code == 0 and data["prices"] == DEFAULT_PRICE_SET
    by_name = {d["name"]: d for d in data["catalog"]}
    assert by_name["H100"]["price_set"] == DEFAULT_PRICE_SET and by_name["H20"]["usd_per_hour"] is None
    assert "usd_per_hour" in by_name["H100"]["sources"]
