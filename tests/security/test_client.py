"""Client side: a server in its own process (`ttmem serve`), reached over loopback, that exits cleanly."""

from ttmem.security.client import SubprocessServer, post_json


def test_server_in_its_own_process_answers_and_exits_cleanly():
    srv = SubprocessServer("tiny-theta:8", mode="isolated", max_new_tokens=4, lifetime_s=60)
    try:
        status, body, _ = post_json(
            srv.host, srv.port, "/generate", {"user": "a", "prompt": [1, 2], "max_new_tokens": 4}
        )
        assert status == 200 and len(body["tokens"]) == 4 and all(0 <= t < 8 for t in body["tokens"])
    finally:
        srv.close()
    assert srv.process.returncode == 0
