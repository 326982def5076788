"""The ``modelfleet`` command line: one module per command family, registered in :mod:`~.main`.

``validate``/``render``/``plan``/``docs`` (:mod:`~.fleetrepo`), ``repo``/``tuf-client`` (:mod:`~.repo`),
``fleet`` (:mod:`~.fleet`), ``serve`` (:mod:`~.serve`), ``agent`` (:mod:`~.agent`). Sub-commands are imported
lazily, so ``modelfleet validate`` never pays for the runtimes. A user error is one ``error: …`` line and a
non-zero exit, never a traceback. Nothing imports this package.
"""
