"""How every in-process HTTP(S) client of a device reaches a server: one place that builds urllib3 pools.

The ``ls-refs`` poll and the status push (:mod:`reconciler.gitops`), the TUF fetcher
(:mod:`reconciler.distribution`), capture uploads and ``modelfleet check`` used to build their own pools; they
now ask :mod:`.pools`, so each takes the same route and trusts the same certificates as the git processes
started for the same endpoint:

- the proxy :func:`reconciler.core.proxy.proxy_for` picks (the endpoint's ``credentials.proxy``, else
  ``https_proxy``/``http_proxy``/``no_proxy`` as git reads them). HTTPS goes through the proxy with ``CONNECT``
  (urllib3's ``ProxyManager``): the origin's ``Authorization`` header travels inside the TLS tunnel only, the
  proxy sees the host and port; a proxy's own credentials (``proxyUsername`` + ``proxyPasswordFile``, or its
  URL's userinfo in the environment) become a ``Proxy-Authorization`` header on the ``CONNECT``, never logged,
  the password file read at each request (a rotated one applies to the next tunnel, no restart).
- server verification: ``caFile`` replaces the system store, ``extraCaFile`` adds a CA to it;
- a client certificate (``clientCertFile``/``clientKeyFile``, mutual TLS), its key file checked like every
  secret file, and loaded by each new connection (a rotated certificate applies to the next one).

:mod:`.clientcert` recognises a server's refusal of a missing or untrusted client certificate, so each client
names it (``ClientCertificateRefused``) instead of calling it a protocol error.
"""
