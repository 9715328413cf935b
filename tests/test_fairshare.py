"""Several clients on one account's limit, on an injected clock: batchrun's limiters against the emulator's own
rate-limit buckets (per-second enforcement), with the headers the API sends, and no wall time anywhere."""

from __future__ import annotations

import heapq
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from batchrun.emulator.config import EmulatorConfig
from batchrun.emulator.ratelimit import RateLimiter
from batchrun.fairshare import CUT, GROWTH_PER_S, MARGIN, Dimension
from batchrun.limiter import Limiter, Reservation
from batchrun.neighbours import Neighbours, account_key
from tests.conftest import batchrun, cli_env, db_rows, prompts, write_jsonl

LATENCY_S = 0.05
STEP_S = 0.002


@dataclass
class Client:
    limiter: Limiter | None  # None: a plain loop at a fixed rate (another service of the organisation)
    rate: float = 0.0
    ok: list[float] = field(default_factory=list)
    refused: int = 0
    next_send: float = 0.0
    retry_at: float = 0.0


class Account:
    """The emulator's buckets for one account, and the replies in flight to each client."""

    def __init__(self, rpm: int) -> None:
        self.now = 0.0
        self.server = RateLimiter(EmulatorConfig(rpm=rpm, itpm=0, otpm=0, bucket_seconds=1.0), now=0.0)
        self.replies: list[tuple[float, int, int, Reservation | None]] = []
        self._order = 0

    def clock(self) -> float:
        return self.now

    def headers(self) -> dict[str, str]:
        return self.server.headers(self.now, 1_800_000_000 + self.now)

    def send(self, who: int, client: Client, reservation: Reservation | None) -> None:
        refusal = self.server.admit(10, 16, self.now)
        if refusal is None:
            self._order += 1
            heapq.heappush(self.replies, (self.now + LATENCY_S, self._order, who, reservation))
            return
        client.refused += 1
        if client.limiter is None:
            client.retry_at = self.now + refusal.retry_after
        else:
            assert reservation is not None
            headers = {**self.headers(), "retry-after": str(refusal.retry_after)}
            client.limiter.failed(reservation, headers, 429, float(refusal.retry_after))

    def deliver(self, clients: list[Client]) -> None:
        while self.replies and self.replies[0][0] <= self.now:
            _, _, who, reservation = heapq.heappop(self.replies)
            client = clients[who]
            client.ok.append(self.now)
            if client.limiter is not None and reservation is not None:
                client.limiter.release(reservation, {"input_tokens": 10, "output_tokens": 16})
                client.limiter.observe(self.headers(), reservation)
                client.limiter.succeeded()


def admissible(limiter: Limiter, now: float) -> bool:
    """What Limiter.acquire waits for; the first request goes alone, as the online engine sends it."""
    return (
        now >= limiter.paused_until
        and limiter.in_flight < max(1, int(limiter.window))
        and limiter._meter_wait(10, 16) == 0
    )


async def simulate(account: Account, clients: list[Client], seconds: float, seed: int = 1) -> None:
    rng = random.Random(seed)
    while account.now < seconds:
        account.deliver(clients)
        for who in rng.sample(range(len(clients)), len(clients)):
            client = clients[who]
            if client.limiter is None:
                if account.now >= client.next_send and account.now >= client.retry_at:
                    client.next_send += 1.0 / client.rate
                    account.send(who, client, None)
                continue
            while admissible(client.limiter, account.now) and (client.ok or not client.limiter.in_flight):
                reservation = await client.limiter.acquire(10, 16)
                account.send(who, client, reservation)
        account.now += STEP_S


def throughput(client: Client, start: float, end: float) -> float:
    return sum(1 for t in client.ok if start <= t < end) / (end - start)


def limiters(account: Account, n: int) -> list[Client]:
    return [Client(Limiter(clock=account.clock, concurrency=64)) for _ in range(n)]


async def test_one_process_alone_keeps_the_whole_limit_without_a_429() -> None:
    account = Account(rpm=1200)
    clients = limiters(account, 1)
    await simulate(account, clients, 30.0)
    assert throughput(clients[0], 5.0, 30.0) >= 0.97 * 20
    assert clients[0].refused == 0
    assert clients[0].limiter.share.dimensions["requests"].factor == 1.0


@pytest.mark.parametrize("n", [2, 4])
async def test_processes_that_share_nothing_but_the_key_converge_on_a_fair_share_with_few_429s(n: int) -> None:
    account = Account(rpm=1200)
    clients = limiters(account, n)
    await simulate(account, clients, 40.0)
    rates = [throughput(c, 10.0, 40.0) for c in clients]
    fair = sum(rates) / n
    sent = sum(len(c.ok) + c.refused for c in clients)
    assert sum(rates) >= 0.9 * 20, rates
    assert sum(c.refused for c in clients) <= 0.03 * sent
    assert all(abs(r - fair) <= 0.25 * fair for r in rates), rates


async def test_a_foreign_client_at_a_fixed_rate_keeps_its_rate_and_batchrun_takes_most_of_the_rest() -> None:
    account = Account(rpm=1200)
    foreign = Client(None, rate=6.0)
    clients = [foreign, *limiters(account, 1)]
    await simulate(account, clients, 40.0)
    assert throughput(foreign, 10.0, 40.0) >= 0.95 * 6.0
    assert throughput(clients[1], 10.0, 40.0) >= 0.8 * (20 - 6.0)


def test_a_429_cuts_the_pace_once_a_second_and_it_grows_back_additively() -> None:
    d = Dimension(limit=1200)
    d.throttled(now=10.0)
    assert d.factor == pytest.approx(CUT)
    d.throttled(now=10.5)  # the same congestion: no second cut
    assert d.factor == pytest.approx(CUT)
    d.throttled(now=11.0)
    assert d.factor == pytest.approx(CUT * CUT)
    d.observe(remaining=19, limit=1200, now=11.0)
    d.observe(remaining=19, limit=1200, now=12.0)
    assert d.factor == pytest.approx(CUT * CUT + GROWTH_PER_S)
    d.observe(remaining=19, limit=1200, now=20.0)
    assert d.factor == 1.0


def test_others_seen_in_the_headers_lower_the_target_and_their_absence_restores_it() -> None:
    d = Dimension(quantum=1.0)
    now, remaining = 0.0, 5.0
    d.observe(remaining=19, limit=1200, now=now)  # the first reply: a full bucket shows its size
    for _ in range(40):  # own sends 5/s, the bucket refills 20/s and stays level: someone else takes 15/s
        now += 0.2
        d.sent(now, 1)
        d.observe(remaining=remaining, limit=1200, now=now)
    assert d.foreign == pytest.approx(15.0, rel=0.1)
    assert d.factor == pytest.approx((1 - d.foreign / 20) * (1 - MARGIN))  # what is left, less the margin
    for _ in range(40):  # now the bucket fills up: nobody else is there
        now += 0.2
        d.observe(remaining=19, limit=1200, now=now)
    assert d.foreign < 1.0
    assert d.factor == 1.0


def test_neighbours_on_one_machine_see_each_other_and_a_dead_ones_entry_goes(tmp_path: Path) -> None:
    os.environ["BATCHRUN_LIMIT_DIR"] = str(tmp_path)
    try:
        account = account_key("sk-ant-secret-key-0123456789", "http://127.0.0.1:1")
        a, b = Neighbours.join(account), Neighbours.join(account)
        assert a is not None and b is not None
        a.publish({"rate:requests": 0.5, "want:requests": 0.5}, now=1.0)
        (seen,) = b.peers(now=1.0)
        assert seen["rate:requests"] == 0.5
        os.close(a.fd)  # as if its process had died: the lock is gone, the file is left behind
        assert b.peers(now=2.0) == []
        assert [p.name for p in (tmp_path / account).iterdir()] == [b.path.name]
        b.leave()
        everything = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
        assert b"secret" not in everything and "secret" not in account
    finally:
        del os.environ["BATCHRUN_LIMIT_DIR"]


def test_sharing_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHRUN_LIMIT_DIR", "off")
    assert Neighbours.join("x") is None


def test_status_and_the_report_show_the_429s_met_and_the_share_of_the_limit(workdir: Path, emulator) -> None:
    """Per-second enforcement of 2,400 RPM (a 40-request bucket) and a few injected 429s: status tells them all,
    and the share of the requests limit the run had while it was sending."""
    emulator.configure(rpm=2400, itpm=0, otpm=0, bucket_seconds=1.0, p429=0.1, retry_after_s=0)
    items = write_jsonl(workdir / "items.jsonl", prompts(60))
    env = cli_env(emulator.base_url, BATCHRUN_LIMIT_DIR=str(workdir / "limits"))
    proc = batchrun(["submit", str(items), "--model", "claude-haiku-4-5", "--run-id", "r"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    met = db_rows(workdir / "batchrun.db", "SELECT count(*) FROM attempts WHERE status = 429")[0][0]
    assert met == emulator.stats()["by_status"].get("429", 0) > 0

    status = json.loads(batchrun(["status", "r", "--json"], cwd=workdir, env=env).stdout)
    limits = status["rate_limits"]
    assert limits["rate_limited"] == met
    assert limits["binding"] == "requests" and limits["limits"]["requests"] == 2400
    sending = limits["seconds"]
    assert limits["shares"]["requests"] == pytest.approx(60 / (sending * 40), rel=0.01)
    text = batchrun(["status", "r"], cwd=workdir, env=env).stdout
    assert f"{met} 429(s) met" in text and "of the account's 2,400 requests per minute" in text
    assert batchrun(["report", "r", "-o", "r.html"], cwd=workdir, env=env).returncode == 0
    page = (workdir / "r.html").read_text()
    assert f"data-key='rate_limits.rate_limited' data-value='{met}'" in page
    assert list((workdir / "limits").rglob("*.peer")) == []  # the run left its neighbours when it ended


def test_the_first_burst_keeps_one_request_in_hand() -> None:
    """The first reply says 20 requests are left of a bucket that refills no faster than the meter: 19 go at once,
    the 20th waits for the refill, so no request lands a hair before the API's bucket has room for it."""
    account = Account(rpm=1200)
    limiter = Limiter(clock=account.clock)
    account.now = 1.0
    limiter.observe(account.headers())
    meter = limiter.meters["requests"]
    assert meter.level == 19
    assert meter.wait_time(20) == pytest.approx(1 / 20)
