"""Keyed pseudonyms, per-person date shifts and generalisation, over whole Arrow columns.

Both keyed functions are AES-256 in ECB mode used as a pseudo-random function: each id becomes one
16-byte block (8 bytes naming the id's domain, 8 bytes of the id), the whole column is encrypted in
one native call, and the first 8 bytes of each output block are the result. ECB's weakness (equal
blocks give equal output) is the property wanted here — the same id always maps to the same value —
and the 63-bit truncation makes the map one-way even for a key holder. No Python runs per value:
numpy builds the blocks and reads the output. Encrypting every value is cheaper than deduplicating
first (AES-NI does ~1 GB/s; a hash table over ids does not), so ids are not deduplicated.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cohortsync.errors import DeidError

if TYPE_CHECKING:
    from cohortsync.config import Settings

MIN_KEY_CHARS = 32
MASK63 = np.uint64(0x7FFF_FFFF_FFFF_FFFF)
US_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class Keys:
    """Sub-keys derived from the one secret, so pseudonyms, shifts and text surrogates are independent."""

    pseudonym: bytes
    shift: bytes
    text: bytes
    fingerprint: str  # safe to store and print: identifies the key without revealing it
    order: bytes  # load_dt order values

    @classmethod
    def from_secret(cls, secret: str) -> Keys:
        if len(secret) < MIN_KEY_CHARS:
            raise DeidError(
                f"COHORTSYNC_DEID_KEY is too short ({len(secret)} characters; need at least {MIN_KEY_CHARS}, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        k = secret.encode("utf-8")

        def sub(label: str) -> bytes:
            return hmac.new(k, f"cohortsync/{label}/v1".encode(), hashlib.sha256).digest()

        return cls(sub("pseudonym"), sub("date-shift"), sub("text"), sub("fingerprint").hex()[:16], sub("load-order"))

    def __repr__(self) -> str:
        return f"Keys(fingerprint={self.fingerprint})"


def _domain_tag(domain: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.sha256(domain.encode()).digest()[:8], "little"))


def prf64(key: bytes, domain: str, values: np.ndarray) -> np.ndarray:
    """AES-256 of (domain, value) blocks for a whole int64 column; returns uint64s (maybe a strided view)."""
    n = len(values)
    if n == 0:
        return np.empty(0, dtype="<u8")
    blocks = np.empty((n, 2), dtype="<u8")
    blocks[:, 0] = _domain_tag(domain)
    blocks[:, 1] = np.asarray(values, dtype="<i8").view("<u8")
    # Encrypted straight into a buffer numpy owns: no bytes copies of the column on either side.
    out = np.empty(blocks.nbytes + 15, dtype=np.uint8)  # update_into wants a block's slack
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    done = enc.update_into(blocks.data.cast("B"), out.data)
    if done != blocks.nbytes or enc.finalize():
        raise DeidError("AES returned an unexpected length")  # ECB of whole blocks: never
    return out[:done].view("<u8").reshape(n, 2)[:, 0]


def _array(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def _numbers(a: pa.Array) -> np.ndarray:
    """A column's values as int64 numpy, nulls as 0. A null-free int64 column (most ids and every
    timestamp, viewed as int64) is read in place: no cast, no fill, no copy."""
    if a.type != pa.int64():
        a = a.view(pa.int64()) if pa.types.is_timestamp(a.type) else a.cast(pa.int64())
    if a.null_count:
        a = a.fill_null(0)
    out: np.ndarray = a.to_numpy(zero_copy_only=False)
    return out


def _nulls_from(source: pa.Array, out: pa.Array) -> pa.Array:
    """Give ``out`` the nulls of ``source`` (same length), in Arrow, without a Python pass.

    Where both start at offset 0 (arrays built from numpy, columns of a fresh batch) ``out`` takes
    ``source``'s validity bitmap as it is; otherwise a kernel builds one.
    """
    if not source.null_count:
        return out
    validity = source.buffers()[0]
    if validity is not None and source.offset == 0 and out.offset == 0 and out.null_count == 0 and len(out.buffers()) == 2:
        return pa.Array.from_buffers(out.type, len(out), [validity, out.buffers()[1]], source.null_count)
    return pc.if_else(pc.is_valid(source), out, pa.scalar(None, out.type))


def pseudonymize(keys: Keys, domain: str, arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Surrogate keys: a positive 63-bit integer per (domain, id); nulls stay null."""
    a = _array(arr)
    if not pa.types.is_integer(a.type):
        raise DeidError(f"cannot pseudonymize a column of type {a.type}")
    out = prf64(keys.pseudonym, domain, _numbers(a)) & MASK63
    out[out == 0] = 1  # 0 is not a positive id; one in 2**63
    return _nulls_from(a, pa.array(out.view("<i8"), type=pa.int64()))  # below 2**63: the same number


def shift_days(keys: Keys, person_ids: pa.Array | pa.ChunkedArray, max_days: int = 182, min_days: int = 1) -> pa.Array:
    """Each person's offset in whole days, in ±[min_days, max_days], never 0; the same in every table."""
    a = _array(person_ids)
    if not pa.types.is_integer(a.type):
        raise DeidError(f"cannot derive date shifts from a column of type {a.type}")
    r = prf64(keys.shift, "person", _numbers(a))
    span = np.uint64(max_days - min_days + 1)
    signed = ((r >> np.uint64(1)) % span + np.uint64(min_days)).astype("<i4")  # at most max_days: fits
    np.negative(signed, out=signed, where=(r & np.uint64(1)) == 0)  # the low bit is the sign
    return _nulls_from(a, pa.array(signed, type=pa.int32()))


def shift_dates(arr: pa.Array | pa.ChunkedArray, days: pa.Array) -> pa.Array:
    """Move dates and timestamps by a per-row number of days; nulls stay null, types are kept.

    A row whose offset is unknown (no person) gets a null date: an unshifted date would be a real one.
    """
    a = _array(arr)
    d = _numbers(days)
    if pa.types.is_date32(a.type):
        moved = pa.array((_numbers(a.view(pa.int32())) + d).astype("<i4"), type=pa.int32())
        return _nulls_from(days, _nulls_from(a, moved.view(a.type)))
    if pa.types.is_timestamp(a.type):
        per_day = {"s": 86_400, "ms": 86_400_000, "us": US_PER_DAY, "ns": US_PER_DAY * 1000}[a.type.unit]
        moved = pa.array(_numbers(a) + d * per_day, type=pa.int64())
        return _nulls_from(days, _nulls_from(a, moved.view(a.type)))
    if pa.types.is_date64(a.type):
        return shift_dates(a.cast(pa.timestamp("ms")), days).cast(a.type)
    raise DeidError(f"cannot shift a column of type {a.type}")


ORDER_MAX_US = 1 << 53  # timestamps up to the year 2255; a*L + b then stays below 2**63


def order_only(keys: Keys, domain: str, row_keys: pa.Array | pa.ChunkedArray, load_dt: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``load_dt`` replaced by a number that orders the versions of one row and nothing else.

    Per landed row key ``k`` a keyed affine map ``a_k * t + b_k`` (``a_k`` in 1..512, ``b_k`` below
    2**60, both from the AES PRF) of the load time ``t`` in microseconds: strictly increasing in ``t``
    for one key, so the newest version of a row is the largest value and a re-landed repeat gets the
    same value; unrelated between keys, so values of different rows cannot be grouped by load or
    compared with dates. Keyed by the *landed* key (the pseudonym), so it can be computed again from
    the landing alone. A row without a key gets a null: it has no versions to order.
    """
    k = _array(row_keys)
    t = _array(load_dt)
    if not pa.types.is_integer(k.type):
        raise DeidError(f"cannot order {domain} rows by a key of type {k.type}")
    if not pa.types.is_timestamp(t.type):
        raise DeidError(f"{domain}.load_dt is {t.type}, not a timestamp")
    us = _numbers(t.cast(pa.timestamp("us")))
    if len(us) and (int(us.min()) < 0 or int(us.max()) >= ORDER_MAX_US):
        raise DeidError(f"{domain}.load_dt holds a time before 1970 or after 2255")
    r = prf64(keys.order, domain, _numbers(k))
    a = (r >> np.uint64(55)) + np.uint64(1)
    b = r & np.uint64((1 << 60) - 1)
    out = (a * us.astype("<u8") + b).astype("<i8")
    return _nulls_from(k, _nulls_from(t, pa.array(out, type=pa.int64())))


def top_code_year_of_birth(arr: pa.Array | pa.ChunkedArray, reference_year: int, max_age: int = 89) -> pa.Array:
    """Safe Harbor: ages over ``max_age`` are aggregated, so such a person's year becomes the one of
    age ``max_age + 1``."""
    a = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    floor = reference_year - (max_age + 1)
    return pc.if_else(pc.less(a, pa.scalar(floor, a.type)), pa.scalar(floor, a.type), a)


def deid_keys(settings: Settings) -> Keys:
    """The de-identification key, from the environment only; sync refuses to run without it."""
    if settings.deid_key is None or not settings.deid_key.get_secret_value():
        raise DeidError(
            "COHORTSYNC_DEID_KEY is not set: cohortsync will not land data without its de-identification key "
            "(see docs/deidentification.md; 'cohortsync demo' makes a local demo key)"
        )
    return Keys.from_secret(settings.deid_key.get_secret_value())
