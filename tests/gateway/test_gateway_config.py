"""The gateway's upstream ``credentials`` blocks take the agent's keys — proxy, proxy credentials, CA files, a
client certificate — read by the agent's own parser, with ``file:line`` errors; the nginx config it generates
verifies and authenticates to the central TUF server with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.errors import UserError
from reconciler.gateway.config import parse_gateway_config
from reconciler.gateway.nginx import nginx_config

DOC = """apiVersion: modelfleet/v1
kind: GatewayConfig
metadata: {name: site-7}
spec:
  upstream:
    source:
      url: https://git.example.com/git/fleet.git
      credentials:
        username: site-7
        passwordFile: git.pw
        proxy: proxy.corp.lan:3128
        proxyUsername: gw
        proxyPasswordFile: proxy.pw
        clientCertFile: site.pem
        clientKeyFile: site.key
        extraCaFile: corp-ca.pem
    tuf:
      url: https://tuf.example.com/
      credentials:
        bearerTokenFile: tuf.token
        proxy: direct
        caFile: ca.pem
        clientCertFile: site.pem
        clientKeyFile: site.key
"""


def test_the_upstream_credentials_take_the_agents_keys(tmp_path: Path) -> None:
    cfg = parse_gateway_config(DOC, tmp_path / "gw.yaml")
    src = cfg.source_credentials
    assert src.proxy == "http://proxy.corp.lan:3128" and src.proxy_username == "gw"
    assert src.proxy_password_file == tmp_path / "proxy.pw" and src.extra_ca_file == tmp_path / "corp-ca.pem"
    assert (src.client_cert_file, src.client_key_file) == (tmp_path / "site.pem", tmp_path / "site.key")
    assert src.bundle_dir == Path("/var/lib/modelfleet-gateway/tls")
    assert cfg.relay_credentials == src  # status defaults to the source's
    assert cfg.tuf_credentials.proxy == "direct" and cfg.tuf_credentials.client_cert_file == tmp_path / "site.pem"


@pytest.mark.parametrize(("old", "new", "line", "words"), [
    ("proxy: proxy.corp.lan:3128", "proxy: socks5://proxy.corp.lan:1080", 11,
     "spec.upstream.source.credentials.proxy: proxy scheme socks5:// is not supported"),
    ("proxy: proxy.corp.lan:3128", "proxy: http://gw:s3cret@proxy.corp.lan:3128", 11, "holds"),
    ("        proxyUsername: gw\n", "", 9, "proxyUsername and proxyPasswordFile go together"),
    ("        clientCertFile: site.pem\n        clientKeyFile: site.key\n        extraCaFile",
     "        clientKeyFile: site.key\n        extraCaFile", 14, "clientKeyFile needs clientCertFile"),
    ("url: https://tuf.example.com/", "url: https://t:p@tuf.example.com/", 18, "embeds a password or token"),
    ("        caFile: ca.pem\n", "        caFile: ca.pem\n        proxyPort: 3\n", 23,
     "unknown field spec.upstream.tuf.credentials.proxyPort (hint: did you mean 'proxy'?)"),
])
def test_bad_values_are_refused_at_file_and_line(tmp_path: Path, old: str, new: str, line: int, words: str) -> None:
    assert old in DOC
    with pytest.raises(UserError) as err:
        parse_gateway_config(DOC.replace(old, new), tmp_path / "gw.yaml")
    assert f"{tmp_path / 'gw.yaml'}:{line}: " in str(err.value) and words in str(err.value), str(err.value)
    assert "s3cret" not in str(err.value)


def test_nginx_sends_the_client_certificate_and_needs_the_tunnel_for_a_proxy(tmp_path: Path) -> None:
    from tests._servers import private_file

    (tmp_path / "site.pem").write_text("cert")
    private_file(tmp_path / "site.key", "key")
    private_file(tmp_path / "tuf.token", "t0k")
    doc = DOC.replace("dataDir", "x") + f"  dataDir: {tmp_path / 'data'}\n"
    cfg = parse_gateway_config(doc, tmp_path / "gw.yaml")
    conf = nginx_config(cfg, run_dir=tmp_path / "run", backend="/bin/true")
    assert f'proxy_ssl_certificate "{tmp_path / "site.pem"}";' in conf
    assert f'proxy_ssl_certificate_key "{tmp_path / "site.key"}";' in conf
    assert f'proxy_ssl_trusted_certificate "{tmp_path / "ca.pem"}";' in conf and 'proxy_ssl_name "tuf.example.com"' in conf
    assert "proxy_pass https://tuf.example.com/metadata/;" in conf

    proxied = parse_gateway_config(doc.replace("proxy: direct", "proxy: proxy.corp.lan:3128"), tmp_path / "gw.yaml")
    with pytest.raises(ValueError, match="through the proxy http://proxy.corp.lan:3128, which nginx cannot use"):
        nginx_config(proxied, run_dir=tmp_path / "run", backend="/bin/true")
    conf = nginx_config(proxied, run_dir=tmp_path / "run", backend="/bin/true", tunnel_port=4711)
    assert "proxy_pass https://127.0.0.1:4711/metadata/;" in conf and 'proxy_set_header Host "tuf.example.com";' in conf

    (tmp_path / "site.key").chmod(0o644)
    with pytest.raises(Exception, match="too open"):
        nginx_config(cfg, run_dir=tmp_path / "run", backend="/bin/true")
