"""``/token`` on the event loop when it cannot wait, in a thread when it must.

With a SQLite grant store and a memory or SQLite replay cache, no step of a token
request waits on a network, and handing it to a thread would cost more than the rest of
it. Only scrypt (a client secret not verified yet) may take long: inside the event loop
the scrypt limiter refuses at once, and the endpoint runs the request again in a thread.
Client authentication comes before anything ``/token`` writes (SEC-99), so the first
attempt leaves nothing behind: the request that needed scrypt still succeeds, with its
proof recorded once.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from dpopkit import DPoPKey, create_proof
from dpopkit.core.replay import ReplayCache
from dpopkit.server.app import create_app
from dpopkit.server.authorize import ConfigUsers
from dpopkit.server.service import ServerSettings, TokenService
from dpopkit.server.throttle import WorkLimiter, WouldBlockError, no_waiting
from dpopkit.storage.memory import MemoryReplayCache
from dpopkit.storage.sql import SQLGrantStore
from dpopkit.storage.sqlite import SQLiteReplayCache

from .conftest import ISSUER, SECRET, TOKEN_URL, USERS, Clock, basic, make_service

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_the_scrypt_limiter_refuses_to_wait_inside_no_waiting() -> None:
    """Inside ``no_waiting`` a slot is refused at once; outside, work proceeds."""
    limiter = WorkLimiter(slots=1)
    with no_waiting(), pytest.raises(WouldBlockError), limiter.slot():
        pass
    with limiter.slot():
        pass


def test_which_stores_are_local(tmp_path: Path, pg_dsn: str, redis_url: str) -> None:
    """Only a SQLite grant store with a memory or SQLite replay cache keeps /token on
    the event loop; PostgreSQL or Redis anywhere sends it to a thread."""
    from dpopkit.storage.postgres import PostgresReplayCache
    from dpopkit.storage.redis import RedisReplayCache

    sqlite = SQLGrantStore(f"sqlite:///{tmp_path}/g.db")
    settings = ServerSettings(issuer=ISSUER)
    cases: list[tuple[SQLGrantStore, ReplayCache, bool]] = [
        (sqlite, MemoryReplayCache(single_process=True), True),
        (sqlite, SQLiteReplayCache(tmp_path / "replay.db"), True),
        (sqlite, RedisReplayCache.from_url(redis_url), False),
        (sqlite, PostgresReplayCache(pg_dsn), False),
    ]
    for store, replay, local in cases:
        assert TokenService(settings, store=store, replay=replay).stores_are_local() is local
    postgres = SQLGrantStore(pg_dsn.replace("postgresql://", "postgresql+psycopg://"), create=False)
    service = TokenService(settings, store=postgres, replay=MemoryReplayCache(single_process=True))
    assert service.stores_are_local() is False


async def test_a_secret_not_verified_yet_goes_to_a_thread_once(
    store: SQLGrantStore, clock: Clock
) -> None:
    """SEC-99: the first request of a client (scrypt) and every later one (cached) get
    200, each proof recorded once; a wrong secret is still 401 ``invalid_client``."""
    service = make_service(store, clock)
    service.client_cache_ttl = 0  # every request reads the client: nothing cached but secrets
    app = create_app(service, authenticator=ConfigUsers(USERS))
    key = DPoPKey.generate("ES256")
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:

        async def token(secret: str) -> httpx.Response:
            proof = create_proof(
                key, htm="POST", htu=TOKEN_URL, now=clock.now, allow_insecure_http=True
            )
            return await http.post(
                "/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": basic("conf", secret), "DPoP": proof},
            )

        assert (await token("wrong-" + SECRET)).status_code == 401
        for _ in range(3):
            answer = await token(SECRET)
            assert answer.status_code == 200, answer.text
            assert answer.json()["token_type"] == "DPoP"
        refused = await token("wrong-" + SECRET)
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_client"
