"""``--state-store etcd://HOST:PORT/PREFIX``: what is accepted, and how a bad value is refused."""

from __future__ import annotations

import pytest

from sluice.server.fleet.location import EtcdLocation, StateStoreURLError


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
])
def test_anything_else_is_refused_naming_the_form(url, words):
    with pytest.raises(StateStoreURLError) as refused:
        EtcdLocation.parse(url)
    assert words in str(refused.value)
    assert "secret" not in str(refused.value)
