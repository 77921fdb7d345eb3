"""The one masker: values and the encodings programs print them in."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus, urlencode

import pytest

from airlock.masking import MASK, Masker, encoded_forms
from airlock.runtimes.agent import mask as agent_mask

VALUE = "pa\"ss\\wörd/+=&% it's-4f1c"


@pytest.mark.parametrize(
    "printed",
    [
        VALUE,
        json.dumps({"K": VALUE}),
        json.dumps({"K": VALUE}, ensure_ascii=False),
        repr({"K": VALUE}),
        repr([VALUE + '"']),
        quote(VALUE, safe=""),
        quote(VALUE).lower(),
        quote_plus(VALUE),
        urlencode({"token": VALUE}),
        base64.b64encode(VALUE.encode()).decode(),
        base64.b64encode(b"user:" + VALUE.encode()).decode(),
        base64.b64encode(b"ab" + VALUE.encode() + b"tail").decode(),
        base64.urlsafe_b64encode(b"x" + VALUE.encode()).decode(),
    ],
)
def test_every_common_encoding_is_masked(printed: str) -> None:
    masked = Masker(VALUE).mask(f"before {printed} after")
    assert MASK in masked
    for form in encoded_forms(VALUE):
        assert form not in masked


def test_each_line_of_a_multiline_value_is_masked() -> None:
    key = "-----BEGIN KEY-----\nMIIBVgIBADANBgkqhkiG9w0BAQEFAAS\n-----END KEY-----"
    masker = Masker(key)
    assert masker.mask("MIIBVgIBADANBgkqhkiG9w0BAQEFAAS") == MASK


def test_short_values_and_forms_are_left_alone() -> None:
    assert Masker("abc").mask("abc abc") == "abc abc"
    assert not Masker("abc")
    # a four-character value has no base64 fragment long enough to mask safely
    assert all(len(f) >= 4 for f in encoded_forms("abcd"))
    assert Masker("abcd").mask("xyz abcd") == f"xyz {MASK}"


def test_longest_form_first_and_values_are_reported_without_encodings() -> None:
    masker = Masker("secret-1", "secret-1-longer")
    assert masker.mask("secret-1-longer") == MASK
    assert masker.values == ("secret-1-longer", "secret-1")


def test_the_agent_uses_the_same_masker() -> None:
    line = json.dumps({"TOKEN": VALUE})
    assert agent_mask(line, [VALUE]) == Masker(VALUE).mask(line)
    assert VALUE not in agent_mask(line, [VALUE])
