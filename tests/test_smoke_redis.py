import redis


def test_redis_fixture_is_a_real_server(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    r.xadd("{demo}:events", {"seq": 1}, id="1-0")
    assert r.xlen("{demo}:events") == 1
