"""Which proxy a URL goes through: git's (libcurl's) environment precedence and no_proxy matching."""

from __future__ import annotations

import pytest

from reconciler.core.proxy import DIRECT, ProxyURLError, bypasses, no_proxy_entries, proxy_for

P = "http://proxy.corp:3128"


@pytest.mark.parametrize(("url", "env", "want"), [
    ("https://git.example.com/f.git", {"https_proxy": P}, P),
    ("https://git.example.com/f.git", {"HTTPS_PROXY": P}, P),
    # lower case wins, like curl and git
    ("https://git.example.com/f.git", {"https_proxy": P, "HTTPS_PROXY": "http://other:1"}, P),
    ("http://git.example.com/f.git", {"http_proxy": P}, P),
    # HTTP_PROXY is ignored (CGI servers set it from a request header: "httpoxy")
    ("http://git.example.com/f.git", {"HTTP_PROXY": P}, None),
    ("http://git.example.com/f.git", {"https_proxy": P}, None),
    ("https://git.example.com/f.git", {"http_proxy": P}, None),
    ("https://git.example.com/f.git", {"all_proxy": P}, P),
    ("http://git.example.com/f.git", {"ALL_PROXY": P}, P),
    ("https://git.example.com/f.git", {"https_proxy": P, "all_proxy": "http://other:1"}, P),
    # an empty value means no proxy (and stops the search), as in git
    ("https://git.example.com/f.git", {"https_proxy": "", "all_proxy": P}, None),
    # no scheme: http://, as curl reads it
    ("https://git.example.com/f.git", {"https_proxy": "proxy.corp:3128"}, P),
    ("ssh://git@git.example.com/f.git", {"all_proxy": P}, None),
    ("file:///srv/f.git", {"all_proxy": P}, None),
])
def test_environment_precedence(url: str, env: dict[str, str], want: str | None) -> None:
    assert proxy_for(url, env) == want


def test_configured_proxy_wins_and_direct_turns_it_off() -> None:
    env = {"https_proxy": "http://env-proxy:1"}
    assert proxy_for("https://h/x", env, "http://cfg:8080") == "http://cfg:8080"
    assert proxy_for("https://h/x", env, DIRECT) is None
    # no_proxy still applies to the configured proxy, as git applies it to http.proxy
    assert proxy_for("https://h/x", {"no_proxy": "h"}, "http://cfg:8080") is None


@pytest.mark.parametrize(("host", "port", "no_proxy", "want"), [
    ("git.example.com", 443, "example.com", True),
    ("example.com", 443, "example.com", True),
    ("notexample.com", 443, "example.com", False),
    ("git.example.com", 443, ".example.com", True),
    ("example.com", 443, ".example.com", True),
    ("GIT.Example.COM.", 443, "example.com", True),
    ("anything", 80, "*", True),
    ("git.example.com", 443, "a.test, example.com", True),
    ("git.example.com", 443, "a.test example.com", True),
    ("git.example.com", 443, "example.com:443", True),
    ("git.example.com", 8443, "example.com:443", False),
    ("127.0.0.1", 8080, "127.0.0.1", True),
    ("127.0.0.2", 8080, "127.0.0.1", False),
    ("10.1.2.3", 443, "10.0.0.0/8", True),
    ("11.1.2.3", 443, "10.0.0.0/8", False),
    ("::1", 443, "::1", True),
    ("::1", 443, "[::1]:443", True),
    ("::1", 80, "[::1]:443", False),
    ("127.0.0.1", 443, "localhost", False),  # names are not resolved
    ("localhost", 443, "127.0.0.1", False),
    ("git.example.com", 443, "", False),
])
def test_no_proxy_matching(host: str, port: int, no_proxy: str, want: bool) -> None:
    assert bypasses(host, port, no_proxy_entries({"no_proxy": no_proxy})) is want


def test_no_proxy_lower_case_wins() -> None:
    env = {"https_proxy": P, "no_proxy": "a.test", "NO_PROXY": "example.com"}
    assert proxy_for("https://git.example.com/", env) == P
    assert proxy_for("https://a.test/", env) is None
    assert proxy_for("https://git.example.com/", {"https_proxy": P, "NO_PROXY": "example.com"}) is None


def test_no_proxy_entry_count_is_bounded() -> None:
    many = ",".join(f"h{i}.test" for i in range(10_000))
    assert len(no_proxy_entries({"no_proxy": many})) == 256


@pytest.mark.parametrize("bad", ["socks5://p:1080", "ftp://p", "http://p:notaport", "http://"])
def test_unusable_proxy_is_named_without_its_credentials(bad: str) -> None:
    with pytest.raises(ProxyURLError) as err:
        proxy_for("https://h/x", {"https_proxy": bad.replace("://", "://user:s3cret@", 1)})
    assert "https_proxy" in str(err.value) and "s3cret" not in str(err.value)


def test_proxy_userinfo_from_the_environment_is_kept_for_the_client() -> None:
    assert proxy_for("https://h/x", {"https_proxy": "http://u:p@proxy:3128"}) == "http://u:p@proxy:3128"
