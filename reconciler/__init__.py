"""modelfleet — GitOps for AI models on edge devices.

The import package is ``reconciler``; the CLI is ``modelfleet`` (``reconciler.cli.main``).
"""

__version__ = "0.1.0"
