"""The web config's rules that need no server: Go durations (rate_limit.interval), Go's
bcrypt.Cost check of basic_auth_users, and the rate limiter's token bucket."""

from __future__ import annotations

import pytest

from exporter.web import webconfig
from exporter.web.webconfig import RateLimiter, bcrypt_hash_problem, go_duration

HASH = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("1m30s", 90.0), ("500ms", 0.5), ("1.5h", 5400.0), ("0", 0.0), (0, 0.0),
     (5, 5e-9), ("-1s", -1.0), ("300us", 3e-4), ("2µs", 2e-6)],
)  # fmt: skip
def test_go_durations(text: object, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1", "1 second", "s", "", "1x", "1.s.", None, 1.5, "--1s"])
def test_not_go_durations(text: object) -> None:
    with pytest.raises(ValueError, match="time: invalid duration"):
        go_duration(text)


@pytest.mark.parametrize(
    ("hashed", "problem"),
    [
        (HASH, None),
        ("$2a$" + HASH[4:], None),
        (HASH[:58], "hashedSecret too short to be a bcrypted password"),
        ("doe", "hashedSecret too short to be a bcrypted password"),
        ("x" + HASH[1:], "bcrypt hashes must start with '$'"),
        ("$3y" + HASH[3:], "is newer than current version '2'"),
        ("$2y$03" + HASH[6:], "cost 3 is outside allowed range (4,31)"),
        ("$2y$32" + HASH[6:], "cost 32 is outside allowed range (4,31)"),
        ("$2y$xx" + HASH[6:], "the cost is not a number"),
    ],
)
def test_bcrypt_cost_check(hashed: str, problem: str | None) -> None:
    found = bcrypt_hash_problem(hashed)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert hashed not in found


def test_token_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(webconfig.time, "monotonic", lambda: now[0])
    limiter = RateLimiter(interval=2.0, burst=3)
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]  # starts full
    now[0] += 1.9
    assert not limiter.allow()
    now[0] += 0.1  # one interval: one token
    assert [limiter.allow(), limiter.allow()] == [True, False]
    now[0] += 60  # never more than the burst
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]
    assert not RateLimiter(interval=1.0, burst=0).allow()  # burst 0: nothing, as in Go
    assert all(RateLimiter(interval=-1.0, burst=0).allow() for _ in range(5))  # no limit
