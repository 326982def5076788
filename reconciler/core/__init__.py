"""Small things every part may use, and that import nothing else of the project.

``errors`` (:class:`UserError`, the one exception a command turns into ``error: …`` and a non-zero exit),
``diagnostics`` (a problem at ``file:line:col`` with a hint), ``conditions`` (Flux-style ``Ready``/``Stalled``
conditions with reasons and timestamps), ``reasons`` (every reason code a device reports, with its meaning and
the operator's action: the one vocabulary the runbook table is generated from), ``units`` (durations, sizes,
version ranges), ``fsutil`` (temp + fsync + rename writes), ``logs`` (text/JSON log setup), ``extras`` (which
optional extra a runtime needs, and the one line that names it), ``credentials`` (the paths of an endpoint's
secrets, checked like ssh checks a key) and ``proxy`` (which proxy a URL goes through, as git decides it). Nothing here
does network or runtime work.
"""
