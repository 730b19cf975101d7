"""``--state-store etcd://HOST:PORT/PREFIX``: what is accepted, and how a bad value is refused."""

from __future__ import annotations

import pytest

from sluice.server.fleet.location import (
    EtcdLocation,
    MetricsSourceURLError,
    StateStoreURLError,
    prometheus_base_url,
)


@pytest.mark.parametrize(("url", "host", "port", "prefix"), [
    ("etcd://127.0.0.1:2379/sluice", "127.0.0.1", 2379, "/sluice"),
    ("etcd://etcd.example:12379/a/b/", "etcd.example", 12379, "/a/b"),
    ("etcd://etcd.example", "etcd.example", 2379, "/sluice"),
])
def test_an_etcd_url_names_a_member_and_a_prefix(url, host, port, prefix):
    assert EtcdLocation.parse(url) == EtcdLocation(host, port, prefix)


@pytest.mark.parametrize(("url", "words"), [
    ("http://127.0.0.1:2379/x", "expected etcd://HOST:PORT/PREFIX"),
    ("etcd:///x", "expected etcd://HOST:PORT/PREFIX"),
    ("etcd://h:port/x", "the port is not a number"),
    ("etcd://user:secret@h:2379/x", "no credentials"),
    ("etcdx://user:secret@h:2379/x", "expected etcd://HOST:PORT/PREFIX"),  # not echoed
])
def test_anything_else_is_refused_naming_the_form(url, words):
    with pytest.raises(StateStoreURLError) as refused:
        EtcdLocation.parse(url)
    assert words in str(refused.value)
    assert "secret" not in str(refused.value)


# fleet gates (issue 15 item 2): --metrics-source
@pytest.mark.parametrize(("url", "base"), [
    ("prometheus://127.0.0.1:9090", "http://127.0.0.1:9090"),
    ("prometheus://prom.example", "http://prom.example:9090"),
    ("prometheus://prom.example:80/prometheus/", "http://prom.example:80/prometheus"),
    ("prometheus://[::1]:9091", "http://[::1]:9091"),
])
def test_a_metrics_source_names_prometheus_http_api(url, base):
    assert prometheus_base_url(url) == base


@pytest.mark.parametrize(("url", "words"), [
    ("http://127.0.0.1:9090", "expected prometheus://HOST:PORT"),
    ("https://user:secret@h:9090", "expected prometheus://HOST:PORT"),
    ("prometheus://h:port", "the port is not a number"),
    ("prometheus://user:secret@h:9090", "no credentials"),
    ("prometheus://h:9090/?token=secret", "no credentials, query or fragment"),
])
def test_a_bad_metrics_source_is_refused_naming_the_form(url, words):
    with pytest.raises(MetricsSourceURLError) as refused:
        prometheus_base_url(url)
    assert words in str(refused.value)
    assert "secret" not in str(refused.value)
