"""Personal data in logs (INC15): card numbers, e-mail addresses and custom patterns."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from airlock.checks import Severity
from airlock.checks.logscan import (
    CODES,
    card_brand,
    luhn_valid,
    mask_card,
    mask_email,
    scan_logs,
    scan_responses,
)
from airlock.errors import UsageError

# Public test numbers of each brand (documented by the card networks and payment providers).
CARDS = {
    "Visa": "4242424242424242",
    "Visa13": "4222222222222",
    "Mastercard": "5555555555554444",
    "Mastercard2": "2223003122003222",
    "American Express": "378282246310005",
    "Discover": "6011111111111117",
    "Diners Club": "36227206271667",
    "JCB": "3566002020360505",
    "UnionPay": "6200000000000005",
}


def write(tmp_path: Path, text: str, name: str = "app.log") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_luhn_accepts_valid_and_rejects_invalid_numbers() -> None:
    """Luhn accepts the test cards and rejects a number with one digit changed."""
    for number in CARDS.values():
        assert luhn_valid(number), number
    assert not luhn_valid("4242424242424241")
    assert not luhn_valid("1234567812345678")


@pytest.mark.parametrize("brand", sorted(CARDS))
def test_each_card_brand_is_found_and_masked(tmp_path: Path, brand: str) -> None:
    """Each brand's test number is found, named by brand and masked to its last four digits."""
    number = CARDS[brand]
    log = write(tmp_path, f"2024-05-01T10:00:00Z INFO charge card={number} ok\n")
    [finding] = scan_logs([log])
    assert finding.code == "logs.card-number" and finding.severity is Severity.ERROR
    assert finding.evidence["brand"] == brand.rstrip("0123456789")
    assert finding.evidence["masked"] == "*" * (len(number) - 4) + number[-4:]
    assert number not in json.dumps(finding.to_dict())
    assert finding.location is not None and finding.location.line == 1


@pytest.mark.parametrize(
    "written", ["4242 4242 4242 4242", "4242-4242-4242-4242", "3782 822463 10005"]
)
def test_separated_card_numbers_are_found(tmp_path: Path, written: str) -> None:
    """Digits grouped with spaces or dashes are found as one card."""
    [finding] = scan_logs([write(tmp_path, f"card: {written} exp 12/31\n")])
    assert finding.evidence["masked"].endswith(written[-4:])


def test_no_false_positives(tmp_path: Path) -> None:
    """Order ids, timestamps, phone numbers, UUIDs and non-Luhn numbers are not cards."""
    lines = [
        "order=1234567890123456 ts=1714557600000 at 20240501120000123",
        "call +1 415-555-0123 or 0044 7911 123456",
        "request 12345678-1234-1234-1234-123456789012 done",
        "ref ORD-4242424242424242 amount 4242424242424241",
        "icon@2x.png sprite@3x.webp",
        "price 0.4242424242424242",
    ]
    assert scan_logs([write(tmp_path, "\n".join(lines) + "\n")]) == []


def test_card_next_to_another_number_is_still_found(tmp_path: Path) -> None:
    """A grouped card followed by a year is still found."""
    [finding] = scan_logs([write(tmp_path, "pan 4242 4242 4242 4242 2031\n")])
    assert finding.evidence["masked"] == "************4242"


def test_masks() -> None:
    """Cards keep only their last four digits; e-mails their first letter and domain."""
    assert mask_card("4242424242424242") == "************4242"
    assert mask_email("john.doe@example.com") == "j***@example.com"
    assert card_brand("1234567890123456") is None


def test_identical_values_are_one_finding_with_a_count(tmp_path: Path) -> None:
    """The same card on many lines is one finding: first line, up to 5 lines, the count."""
    text = "".join(
        f"line {i} card 4242424242424242\n" if i % 2 else f"line {i}\n" for i in range(1, 21)
    )
    [finding] = scan_logs([write(tmp_path, text)])
    assert finding.evidence["count"] == 10
    assert finding.evidence["lines"] == [1, 3, 5, 7, 9]
    assert finding.location is not None and finding.location.line == 1
    assert "10 times" in finding.message


def test_emails_are_warnings_and_masked(tmp_path: Path) -> None:
    """E-mails are warnings, masked, counted case-insensitively, and can be switched off."""
    log = write(tmp_path, "a\nsent to Jane.Roe@Example.org\nretry jane.roe@example.org\n")
    [finding] = scan_logs([log])
    assert finding.code == "logs.email" and finding.severity is Severity.WARNING
    assert finding.evidence == {
        "kind": "email",
        "masked": "J***@Example.org",
        "count": 2,
        "lines": [2, 3],
    }
    assert "jane.roe" not in finding.message.lower()
    assert scan_logs([log], emails=False) == []


def test_custom_pattern_is_reported_by_name(tmp_path: Path) -> None:
    """A configured pattern gives logs.pattern naming it, with the value masked."""
    log = write(tmp_path, "x\nuser ssn=123-45-6789 saved\n")
    [finding] = scan_logs([log], patterns={"us-ssn": r"\b\d{3}-\d{2}-\d{4}\b"})
    assert finding.code == "logs.pattern" and finding.evidence["pattern"] == "us-ssn"
    assert "us-ssn" in finding.message and "123-45-6789" not in finding.message
    assert finding.location is not None and finding.location.line == 2


def test_invalid_pattern_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    """An invalid regular expression raises UsageError naming the pattern."""
    with pytest.raises(UsageError, match="'broken'"):
        scan_logs([write(tmp_path, "x\n")], patterns={"broken": "([a-z"})


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    """A log file that does not exist raises UsageError."""
    with pytest.raises(UsageError, match="cannot read"):
        scan_logs([tmp_path / "nope.log"])


def test_responses_are_scanned_with_their_label() -> None:
    """Response bodies are scanned like logs and located at their label."""
    body = json.dumps({"id": 1, "email": "ann@example.com", "card": "5555555555554444"})
    findings = scan_responses([("GET /accounts/1", body.encode()), ("GET /health", b"ok")])
    assert {f.code for f in findings} == {"logs.card-number", "logs.email"}
    assert all(f.location is not None and f.location.file == "GET /accounts/1" for f in findings)
    assert "5555555555554444" not in repr(findings) and "ann@" not in repr(findings)


def test_codes_are_documented() -> None:
    """Every code is described in CODES and in docs/gates.md."""
    docs = (Path(__file__).parents[1] / "docs" / "gates.md").read_text()
    assert set(CODES) == {"logs.card-number", "logs.email", "logs.pattern"}
    for code in CODES:
        assert f"`{code}`" in docs


def test_line_numbers_across_blocks(tmp_path: Path) -> None:
    """Line numbers stay right across the blocks a big file is read in."""
    filler = "x" * 99 + "\n"
    text = filler * 30000 + "card 4242424242424242\n" + filler * 10 + "to bob@example.com\n"
    findings = scan_logs([write(tmp_path, text)])
    assert [f.location.line for f in findings if f.location] == [30001, 30012]


@pytest.mark.slow
def test_50_mb_log_is_scanned_with_flat_memory(tmp_path: Path) -> None:
    """A 50 MB log is scanned in bounded memory and finds the one card at its end."""
    log = tmp_path / "big.log"
    line = "2024-05-01T10:00:00.123Z INFO request id=8f14e45f order=1234567890 took 12ms\n"
    with log.open("w") as fh:
        block = line * 10000
        while fh.tell() < 50 * 2**20:
            fh.write(block)
        fh.write("charge card=4242424242424242\n")
    tracemalloc.start()
    findings = scan_logs([log])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [f.code for f in findings] == ["logs.card-number"]
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
