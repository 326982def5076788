"""Git in, status out.

Workflow: :class:`~.source.GitSource` polls the fleet repository cheaply (``ls-remote``), fetches a new head
into a bare cache and has :mod:`~.verify` judge its commit signatures against the device's own allowed
signers or keyring (never the repository's); :mod:`~.bundles` imports Git bundles dropped into a folder for
air-gapped devices. Going the other way, :class:`~.statuswriter.StatusWriter` commits the device's status
document to its own ``status/<device>`` branch in the background, and :mod:`~.fleetstatus` reads every
device's branch back into a fleet-wide report (``modelfleet fleet status``).

:mod:`~.auth` hands git a remote's credentials, CA, client certificate and proxy through its environment
(:mod:`~.cabundle` writes the bundle git needs to add a CA to the system store); the in-process clients
(:mod:`~.lsrefs`, :mod:`~.smartpush`) get the same route and TLS settings from :mod:`reconciler.net`.

It imports :mod:`reconciler.core`, :mod:`reconciler.net` and the schemas of :mod:`reconciler.fleet`.
"""
