"""Record signatures: HMAC-SHA256 of the record, from a keyed state made once per key."""

from __future__ import annotations

import hashlib
import hmac
import threading

from core.infra.signing import SHORT_HEX, RecordSigner

KEY = b"k" * 32


def test_a_signature_is_the_hmac_of_the_record_whatever_was_signed_before() -> None:
    # The signer copies a keyed template; were the template updated, each signature would depend on the last.
    signer = RecordSigner(KEY)
    records = [b"", b"a", b"a", b"{\"ino\": 7}" * 50, b"a"]
    for record in records:
        assert signer.sign(record) == hmac.new(KEY, record, hashlib.sha256).hexdigest()
        assert signer.verify(record, hmac.new(KEY, record, hashlib.sha256).hexdigest())
    assert not signer.verify(b"a", signer.sign(b"b"))
    assert not RecordSigner(b"j" * 32).verify(b"a", signer.sign(b"a"))


def test_signing_from_many_threads_gives_each_record_its_own_signature() -> None:
    # SQLite and the blob store sign and verify on worker threads as well as on the loop.
    signer = RecordSigner(KEY)
    wrong: list[bytes] = []

    def sign_many(tag: bytes) -> None:
        for i in range(2_000):
            record = tag + str(i).encode()
            if signer.sign(record) != hmac.new(KEY, record, hashlib.sha256).hexdigest():
                wrong.append(record)

    threads = [threading.Thread(target=sign_many, args=(bytes([65 + n]),)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_a_signature_cut_to_128_bits_checks_and_no_other_cut_does() -> None:
    # The Redis store keeps a signature's first 128 bits (issue #17): those must check, nothing shorter may.
    signer = RecordSigner(KEY)
    whole = signer.sign(b"a")
    assert signer.verify(b"a", whole[:SHORT_HEX])
    assert not signer.verify(b"b", whole[:SHORT_HEX])
    assert not signer.verify(b"a", signer.sign(b"b")[:SHORT_HEX])
    for cut in (0, 1, 8, SHORT_HEX - 2, SHORT_HEX - 1, SHORT_HEX + 1, 48, 63):
        assert not signer.verify(b"a", whole[:cut])
