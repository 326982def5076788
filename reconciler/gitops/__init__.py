"""Git in, status out.

Workflow: :class:`~.source.GitSource` polls the fleet repository cheaply (``ls-remote``), fetches a new head
into a bare cache and has :mod:`~.verify` judge its commit signatures against the device's own allowed
signers or keyring (never the repository's); :mod:`~.bundles` imports Git bundles dropped into a folder for
air-gapped devices. Going the other way, :class:`~.statuswriter.StatusWriter` commits the device's status
document to its own ``status/<device>`` branch in the background, and :mod:`~.fleetstatus` reads every
device's branch back into a fleet-wide report (``modelfleet fleet status``).

It imports :mod:`reconciler.core` and the schemas of :mod:`reconciler.fleet`.
"""
