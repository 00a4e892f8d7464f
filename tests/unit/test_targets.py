"""targets: every form parses (no address is refused), names resolve once, bad text is one line."""
import socket

import pytest

from bpfhook import targets
from bpfhook.targets import TargetError


@pytest.mark.parametrize("text, family, address", [
    ("127.0.0.1:8080", socket.AF_INET, ("127.0.0.1", 8080)),
    ("10.1.2.3:80", socket.AF_INET, ("10.1.2.3", 80)),  # parsed, never contacted: nothing is refused
    ("172.17.0.2:8080", socket.AF_INET, ("172.17.0.2", 8080)),
    ("[2001:db8::1]:443", socket.AF_INET6, ("2001:db8::1", 443)),
    ("/run/app.sock", socket.AF_UNIX, "/run/app.sock"),
    ("./rel.sock", socket.AF_UNIX, "./rel.sock"),
    ("@abstract", socket.AF_UNIX, "\0abstract"),
])
def test_forms(text, family, address):
    t = targets.parse(text)
    assert (t.family, t.address, t.text) == (family, address, text)


def test_localhost_resolves_by_name():
    t = targets.parse("localhost:9")
    assert t.address[0] in ("127.0.0.1", "::1") and t.via.startswith("dns")


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "::1:80", ":80", "host:",
                                  "host:http", "@", "/a\0b"])
def test_bad_forms_are_one_line_errors(text):
    with pytest.raises(TargetError) as err:
        targets.parse(text, "--to")
    assert "\n" not in str(err.value) and "--to" in str(err.value)


def test_str_shows_the_address():
    assert str(targets.parse("[::1]:80")) == "[::1]:80" and str(targets.parse("/x.sock")) == "/x.sock"


def test_a_name_several_containers_answer_to_is_an_error_not_a_dns_lookup(monkeypatch):
    from bpfhook import containers

    def several(spec):
        raise containers.ContainerError(f"{spec!r} names 2 containers: a, b", ["a", "b"])

    monkeypatch.setattr(containers, "find", several)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("looked up in DNS"))
    with pytest.raises(TargetError, match="'web' names 2 containers"):
        targets.parse("web:80")
