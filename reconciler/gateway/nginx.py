"""The gateway's nginx configuration, generated from its GatewayConfig (``modelfleet gateway nginx-config``).

One server on ``listen``:

- ``/git/fleet.git/…``: the mirror, read-only, through fcgiwrap + ``git http-backend`` (protocol v2); the
  devices' idle poll (an ``ls-refs`` asking for ref prefixes only) is answered from a 1 s microcache, as
  docs/scale.md measured on a central server; a push is refused by nginx before git sees it;
- ``/git/status.git/…``: the site's status repository, where devices push ``status/<id>`` (Basic auth when
  ``statusAuth.htpasswdFile`` is set; the request body bounded at 1 MiB: a status commit is three small
  objects);
- ``/tuf/targets/…``: ``proxy_cache`` of the central targets, kept ``tufCache.inactive`` after the last use,
  one upstream request per file however many devices ask at once (``proxy_cache_lock``); targets are
  content-addressed (consistent snapshots) or signed by length and hashes, so a cached copy is never stale;
- ``/tuf/metadata/…``: passed through with a ``tufCache.metadataSeconds`` lifetime (default 1 s; 0: not
  cached), so ``timestamp.json`` reaches devices within that of its publication.

Upstream TUF credentials become a ``proxy_set_header Authorization`` line: the file is written 0600 and holds
the only secret the gateway has besides its Git credentials (read by git from their files at each use). nginx
verifies the central TUF server against ``caFile``/``extraCaFile`` and sends the ``clientCertFile`` a server
with mutual TLS asks for; behind an egress proxy it reaches it through the gateway's CONNECT tunnel
(:mod:`~reconciler.gateway.tunnel`). nginx reads the certificate and key when it loads this config: the gateway
writes it again and reloads nginx when one of those files changes (``Gateway._reload_on_rotation``).
"""

from __future__ import annotations

import getpass
import grp
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from reconciler.core.proxy import proxy_for
from reconciler.core.redact import redact_url
from reconciler.gateway.config import GatewayConfig
from reconciler.gitops.cabundle import combined_bundle

GIT_HTTP_BACKEND = "git-http-backend"

LS_REFS_MAP = r"""    map "$request_method:$uri:$request_body" $lsrefs_skip_cache {
        default 1;
        "~^POST:/git/fleet\.git/git-upload-pack:0014command=ls-refs\n(?:[0-9a-f]{4}[a-z-]+=[^\n]*\n)*0001(?:[0-9a-f]{4}ref-prefix [^\n]+\n)+0000\z" 0;
    }
"""


def http_backend() -> str:
    """The ``git http-backend`` program (in git's exec path)."""
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
    return str(Path(exec_path) / GIT_HTTP_BACKEND)


def _quote(value: str) -> str:
    if any(c in value for c in '"\\\n\r;{}$'):
        raise ValueError(f"value not allowed in an nginx config: {value!r}")
    return f'"{value}"'


def tuf_route(cfg: GatewayConfig) -> str | None:
    """The proxy the TUF upstream is reached through (its ``credentials.proxy``, else the environment's, as
    every client of the gateway and the devices decides it), None for direct."""
    return proxy_for(cfg.tuf_url, os.environ, cfg.tuf_credentials.proxy)


def _upstream_tls(cfg: GatewayConfig) -> str:
    """nginx's TLS to the central TUF server: verified against ``caFile`` (instead of the system's CAs) and
    ``extraCaFile`` (added to them: a bundle of both, as git gets), the gateway's client certificate if set."""
    creds = cfg.tuf_credentials
    if creds.extra_ca_file is not None:
        trusted = combined_bundle(creds.ca_file, creds.extra_ca_file, creds.bundle_dir)
    else:
        trusted = creds.ca_file or Path("/etc/ssl/certs/ca-certificates.crt")
    lines = ["proxy_ssl_verify on;", "proxy_ssl_server_name on;", f"proxy_ssl_name {_quote(urlsplit(cfg.tuf_url).hostname or '')};",
             f"proxy_ssl_trusted_certificate {_quote(str(trusted))};"]
    if creds.client_cert_file is not None:
        creds.check_client_key()  # a key readable by others is refused here as everywhere
        lines += [f"proxy_ssl_certificate {_quote(str(creds.client_cert_file))};",
                  f"proxy_ssl_certificate_key {_quote(str(creds.client_key_path))};"]
    return "\n".join("            " + line for line in lines)


def nginx_config(cfg: GatewayConfig, *, run_dir: Path, backend: str | None = None,
                 tunnel_port: int | None = None) -> str:
    """The nginx config of the gateway ``cfg`` (paths under ``cfg.data_dir`` and ``run_dir``); ``tunnel_port``:
    the loopback port of the gateway's CONNECT tunnel, needed when the TUF upstream's route is a proxy."""
    data, run = cfg.data_dir.resolve(), run_dir.resolve()
    backend = backend or http_backend()
    tuf = urlsplit(cfg.tuf_url)
    netloc = tuf.netloc.rsplit('@', 1)[-1]
    route = tuf_route(cfg)
    if route is not None and tunnel_port is None:
        raise ValueError(f"the TUF upstream {tuf.scheme}://{netloc} is reached through the proxy "
                         f"{redact_url(route)}, which nginx cannot use itself: `modelfleet gateway run` relays it "
                         "(a CONNECT tunnel on loopback)")
    # Through the proxy, nginx connects to the gateway's tunnel (reconciler.gateway.tunnel) and speaks TLS to the
    # central server inside it, under the server's own name.
    via = f"127.0.0.1:{tunnel_port}" if route is not None else netloc
    upstream = f"{tuf.scheme}://{via}{tuf.path.rstrip('/')}"
    auth = cfg.tuf_credentials.authorization()
    tuf_common = "\n".join(filter(None, [
        f"            proxy_set_header Authorization {_quote(auth)};" if auth else
        "            proxy_set_header Authorization \"\";",
        f"            proxy_set_header Host {_quote(netloc)};" if route is not None else
        "            proxy_set_header Host $proxy_host;",
        "            proxy_http_version 1.1;",
        "            proxy_set_header Connection \"\";",
        "            proxy_cache tuf;",
        "            proxy_cache_key $uri;",
        "            proxy_cache_lock on;",
        "            proxy_cache_lock_timeout 120s;",
        "            proxy_cache_use_stale error timeout updating;",
        "            proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;",
        "            proxy_hide_header Set-Cookie;",
        "            proxy_read_timeout 120s;",
        "            add_header X-Cache-Status $upstream_cache_status always;",
        _upstream_tls(cfg) if tuf.scheme == "https" else "",
    ]))
    git_fcgi = f"""
            fastcgi_pass unix:{run}/fcgiwrap.sock;
            fastcgi_read_timeout 120s;
            fastcgi_param SCRIPT_FILENAME {backend};
            fastcgi_param GIT_PROJECT_ROOT {data}/repos;
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param GIT_PROTOCOL $http_git_protocol;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param PATH_INFO $git_path;
            fastcgi_param QUERY_STRING $args;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param HTTP_CONTENT_ENCODING $http_content_encoding;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param SERVER_PROTOCOL $server_protocol;"""
    status_auth = (f"auth_basic \"status push\";\n            auth_basic_user_file {cfg.htpasswd_file};"
                   if cfg.htpasswd_file else "")
    user = f"user {getpass.getuser()} {grp.getgrgid(os.getegid()).gr_name};" if os.geteuid() == 0 else ""
    meta_valid = (f"proxy_cache_valid 200 {cfg.metadata_seconds}s;" if cfg.metadata_seconds
                  else "proxy_no_cache 1;\n            proxy_cache_bypass 1;")
    return f"""# Generated by `modelfleet gateway` for gateway {cfg.name}; do not edit (edit the GatewayConfig).
daemon off;
{user}
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    log_format gateway '$request_method $uri $arg_service $status $remote_user $request_time $msec '
                       '$body_bytes_sent $upstream_cache_status';
    access_log {run}/access.log gateway;
    client_body_temp_path {run}/tmp/body;
    fastcgi_temp_path {run}/tmp/fastcgi;
    proxy_temp_path {run}/tmp/proxy;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
    keepalive_timeout 120s;
    keepalive_requests 100000;
    types {{ application/json json; application/octet-stream bin onnx; }}
    default_type application/octet-stream;
    fastcgi_cache_path {data}/cache/lsrefs levels=1:2 keys_zone=lsrefs:1m max_size=16m inactive=60s use_temp_path=off;
    proxy_cache_path {data}/cache/tuf levels=1:2 keys_zone=tuf:10m max_size={cfg.cache_max_size} inactive={cfg.cache_inactive} use_temp_path=off;
{LS_REFS_MAP}
    server {{
        listen {cfg.listen};
        location ~ ^/git/fleet\\.git/git-receive-pack$ {{ return 403; }}
        location ~ ^/git(?<git_path>/fleet\\.git/.*)$ {{
            client_max_body_size 1m;
            client_body_buffer_size 16k;
            client_body_in_single_buffer on;
            fastcgi_cache lsrefs;
            fastcgi_cache_methods POST;
            fastcgi_cache_key "$request_method $request_uri $http_git_protocol $request_body";
            fastcgi_no_cache $lsrefs_skip_cache;
            fastcgi_cache_bypass $lsrefs_skip_cache;
            fastcgi_cache_valid 200 1s;
            fastcgi_ignore_headers Cache-Control Expires;
            fastcgi_cache_lock on;
            fastcgi_cache_lock_timeout 5s;{git_fcgi}
        }}
        location ~ ^/git(?<git_path>/status\\.git/.*)$ {{
            client_max_body_size 1m;
            {status_auth}{git_fcgi}
        }}
        location /tuf/metadata/ {{
            proxy_pass {upstream}/metadata/;
            {meta_valid}
{tuf_common}
        }}
        location /tuf/targets/ {{
            proxy_pass {upstream}/targets/;
            proxy_cache_valid 200 {cfg.cache_inactive};
{tuf_common}
        }}
        location / {{ return 404; }}
    }}
}}
"""
