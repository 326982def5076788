"""Site gateways: one process per site between its devices and the central servers, trusted by no one.

A fleet of 100,000 devices in 500 sites should cost the central Git server what 500 clients cost, not 100,000,
and the central TUF server one copy of a model per site, not per device. A gateway sits in each site and does
three things, all with existing engines — git, ``git http-backend`` behind nginx, nginx's ``proxy_cache``:

1. :mod:`~reconciler.gateway.mirror` — a read-only bare mirror of the fleet repository's branches, served to
   the site's devices by ``git http-backend``. Every ``interval`` the gateway asks upstream for the branch heads
   in one protocol v2 ``ls-refs`` request (the devices' own poll, :mod:`reconciler.gitops.lsrefs`) and fetches
   only when one moved. The site's polls end at the gateway (answered from nginx's 1 s ``ls-refs`` microcache).
2. :mod:`~reconciler.gateway.nginx` — a TUF cache: targets cached by nginx (one upstream download per file per
   site, the next thousand devices served from disk), metadata passed through with a short lifetime.
3. :mod:`~reconciler.gateway.relay` — a status relay: devices push ``status/<id>`` to the gateway's status
   repository; every ``interval`` the relay sends the site's new status commits upstream in one push per
   upstream status repository carrying many ref updates, with a journal (temp + fsync + rename) of what
   upstream acknowledged, so a gateway killed at any moment loses no status commit.

:mod:`~reconciler.gateway.service` supervises nginx and fcgiwrap and runs the rounds
(``modelfleet gateway run --config gateway.yaml``; :mod:`~reconciler.gateway.config` reads the file).

**What the gateway is not: trusted.** It holds no signing key. Devices verify what it serves end to end as they
verify the central servers: commit signatures and history protection on the mirror's commits, the whole TUF
workflow (signatures, versions, expiry, target lengths and hashes) on its cached metadata and targets. Status
commits are signed by each device's own key, so the relay can withhold or delay them but not forge or alter one.
Devices list the gateway first and the central servers as fallback (``spec.gateway`` in the agent config): a
gateway that is down, serves something refused, or is behind makes a device ask the central servers in the same
pass. A gateway that withholds updates holds a device back at most ``gateway.upstreamCheckInterval`` for Git
(the device asks the central repository directly that often) and the TUF timestamp's expiry for models
(docs/security.md, "Site gateways").
"""
