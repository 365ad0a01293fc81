"""PII masking: each kind on real-looking positives, and look-alikes that must survive untouched."""

import pytest

from lmstack.data.pii import PIIConfig, PIIMasker, card_valid, cn_id_valid, ip_valid, luhn_valid


def _id_with_check(first17: str) -> str:
    # ISO 7064 MOD 11-2, computed here independently of the implementation's tables.
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    check = (12 - sum(int(d) * w for d, w in zip(first17, weights)) % 11) % 11
    return first17 + ("X" if check == 10 else str(check))


def _luhn_complete(body: str) -> str:
    digits = [int(d) for d in body][::-1]
    total = sum((2 * d - 9 if 2 * d > 9 else 2 * d) if i % 2 == 0 else d for i, d in enumerate(digits))
    return body + str((10 - total % 10) % 10)


POSITIVES = [
    ("Write to jane.doe+news@mail.example.co.uk today", "email"),
    ("邮箱：wang_wei@163.com，欢迎联系", "email"),
    ("Call me on 13812345678 tonight", "phone"),
    ("他的电话是+1 (592) 555-0117。", "phone"),
    ("联系邮箱是wang@163.com。", "email"),
    ("服务器地址是10.2.3.4，备用是fe80::1:2:3。", "ip"),
    ("电话：+86 138-1234-5678", "phone"),
    ("手机 0086 13912345678 有效", "phone"),
    ("Office: +1 (415) 555-2671", "phone"),
    ("UK desk +44 20 7946 0958", "phone"),
    ("US line (212) 555-0199 or 212-555-0199", "phone"),
    ("北京座机 010-62345678", "phone"),
    ("server at 192.168.1.10 is down", "ip"),
    ("v6 host 2001:db8::8a2e:370:7334 answered", "ip"),
    ("full fe80:0:0:0:202:b3ff:fe1e:8329 too", "ip"),
    ("身份证号 11010519491231002X 已登记", "id"),
    (f"ID {_id_with_check('44030419900307123')} on file", "id"),
    ("Visa 4111 1111 1111 1111 exp 12/27", "card"),
    ("MC 5500-0000-0000-0004", "card"),
    ("Amex 378282246310005", "card"),
    (f"银联卡 {_luhn_complete('621226120201158434')}", "card"),
]

NEGATIVES = [
    "Python 3.11.7 was released; the OID 1.2.3.4.5 has five parts",
    "The meeting is on 2023-01-15 at 12:30:45.",
    "123 + 456 = 579 and 1000000 * 3 = 3000000",
    "slicing x[1::2] and a::b in code",
    "999.1.1.1 is not an address, nor is 1.2.3",
    "order number 4111 1111 1111 1112 fails the Luhn check",
    "fake ID 11010519491231002Y and 11010519991331002X (month 13)",
    "a phone-like 1234567890123 with no structure",
    "user@localhost has no domain suffix",
    "ISBN 978-3-16-148410-0",
    "the year 2024 and 20241225 as a date stamp",
    "Mobile prefix 12812345678 does not exist in China",
]


@pytest.mark.parametrize("text,kind", POSITIVES)
def test_positive(text, kind):
    masker = PIIMasker()
    out, found = masker.mask(text)
    assert found[kind] >= 1, (text, out, found)
    assert f"<|{kind}|>" in out
    assert sum(found.values()) == out.count("<|")


@pytest.mark.parametrize("text", NEGATIVES)
def test_negative_look_alikes(text):
    out, found = PIIMasker().mask(text)
    assert out == text and not found, (out, found)


def test_validators_by_hand():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert cn_id_valid("11010519491231002X") and not cn_id_valid("110105194912310021")
    assert card_valid("4111111111111111") and not card_valid("1111111111111117")  # Luhn-valid, no issuer
    assert ip_valid("10.0.0.255") and not ip_valid("10.0.0.256") and not ip_valid("1::2")


def test_counts_accumulate_and_kinds_select():
    m = PIIMasker(PIIConfig(kinds=["email"]))
    out, found = m.mask("a@b.com and 13812345678")
    assert out == "<|email|> and 13812345678"
    m.mask("c@d.org")
    assert m.counts["email"] == 2 and m.docs_with_pii == 2
    with pytest.raises(ValueError, match="unknown PII kind"):
        PIIConfig(kinds=["ssn"])
