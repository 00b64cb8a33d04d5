"""The failover drill's cluster helper (``qa.ha_cluster``) without starting anything: the
configuration each Patroni node gets, the multi-host URL Renum is given (and that Renum's own
connection arguments keep every host of it), and a teardown that leaves nothing behind."""

from __future__ import annotations

import pytest

from app.db.postgres_snapshots import connect_arguments
from qa.ha_cluster import LOOP_WAIT_SECONDS, RETRY_TIMEOUT_SECONDS, TTL_SECONDS, PatroniCluster


def test_a_failover_needs_two_nodes() -> None:
    with pytest.raises(ValueError, match="at least two nodes"):
        PatroniCluster(size=1)


def test_patronis_timings_fit_its_own_rule() -> None:
    assert LOOP_WAIT_SECONDS + 2 * RETRY_TIMEOUT_SECONDS <= TTL_SECONDS


def test_each_node_is_configured_for_a_synchronous_failover_on_loopback() -> None:
    cluster = PatroniCluster(size=2)
    try:
        first, second = cluster.nodes
        config = cluster._config(first)
        dcs = config["bootstrap"]["dcs"]
        assert dcs["synchronous_mode"] is True
        assert dcs["ttl"] == TTL_SECONDS
        assert config["etcd3"]["hosts"] == [f"127.0.0.1:{cluster.etcd_port}"]
        assert config["postgresql"]["listen"] == f"127.0.0.1:{first.pg_port}"
        assert config["restapi"]["listen"] == f"127.0.0.1:{first.api_port}"
        assert config["postgresql"]["data_dir"] == str(first.data)
        assert cluster._config(second)["name"] == "node1"
        assert len({first.pg_port, first.api_port, second.pg_port, second.api_port}) == 4
        assert cluster.members() == []  # nothing runs yet
        assert not first.alive
        assert first.postmaster() is None
    finally:
        cluster.close()
    assert not cluster.root.exists()


def test_renum_keeps_every_host_of_the_clusters_url() -> None:
    cluster = PatroniCluster(size=2)
    try:
        arguments = connect_arguments(cluster.url("renum"))
    finally:
        cluster.close()
    assert arguments["host"] == ["127.0.0.1", "127.0.0.1"]
    assert arguments["port"] == [node.pg_port for node in cluster.nodes]
    assert arguments["target_session_attrs"] == "read-write"
    assert arguments["database"] == "renum"
