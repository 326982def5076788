"""Pre-flight checks in the spirit of ``flux check --pre``: is this machine set up to run its side of the fleet?

Two sides, each a list of named checks that are ok, a warning or an error, with a one-line message and a hint:

- the **operator side** (``modelfleet check --repo URL``): git and its version, the operator's commit signing
  set-up and allowed-signers file, the fleet repository's branch reached with the given credentials, the
  devices' status branches (heartbeats older than three heartbeat intervals, untrusted statuses), and the TUF
  repository's roles (expired, or expiring soon: a fleet whose timestamp expires stops updating);
- the **device side** (``modelfleet check --agent-config PATH``): the agent config loads, every secret file it
  names is private, the trust anchors are readable, the status signing key exists, the Git and TUF servers
  (and the site gateway, when the config names one) answer and agree with the device's clock, the state dir is writable, the disk holds the largest model the
  fleet names, and which runtimes are installed.

Workflow: :mod:`~.facts` gathers (git, the filesystem, and HTTP through :mod:`~.probes`; every failure to
observe is itself a fact, never an exception), :mod:`~.judge` decides (pure functions of the facts in :mod:`~.model`: tests build any situation
without a server or a clock), :mod:`~.render` prints a table or JSON. ``modelfleet check`` (cli.check) exits 1 on
any error, and with ``--strict`` on any warning too.

It sits above the agent, gitops, distribution and rollout packages whose code it reuses (the agent's config
loader, ``fleet status``'s reader, the credentials' file check), and below the CLI.
"""
