"""Examples and exit codes of every command, shown at the end of its ``--help`` and in docs/cli.md.

Kept in one table rather than beside each command so that the whole tree reads alike (an operator compares
``plan --help`` with ``rollout promote --help``) and a test can hold every command to it: a command without
examples fails ``tests/cli/test_help.py``. Every example line is also parsed against the real CLI by
``tests/test_docs_commands.py`` (docs/cli.md carries them), so an example cannot drift from its options.
"""

from __future__ import annotations

import click

# Path after ``modelfleet`` -> [(comment, command line)].
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "": [("check the fleet checkout you are in", "modelfleet validate"),
         ("what a pull request changes, per device", "modelfleet plan --base origin/main"),
         ("what the devices report", "modelfleet fleet status"),
         ("document a manifest field", "modelfleet explain Deployment.spec.rollout")],
    "agent": [("the device's local status", "modelfleet agent status")],
    "agent keygen": [("provision the device's status key; put the printed line in its Device manifest",
                      "modelfleet agent keygen --config /etc/modelfleet/agent.yaml"),
                     ("print the public key of the existing key", "modelfleet agent keygen --show")],
    "agent once": [("one reconcile pass, e.g. after provisioning", "modelfleet agent once"),
                   ("the pass result for a script", "modelfleet agent once --config /etc/modelfleet/agent.yaml "
                                                    "--format json")],
    "agent reconcile": [("ask the running agent for a pass now", "modelfleet agent reconcile")],
    "agent run": [("the daemon, as systemd runs it", "modelfleet agent run --config /etc/modelfleet/agent.yaml "
                                                     "--log-format json")],
    "agent status": [("for people", "modelfleet agent status"),
                     ("the DeviceStatus document", "modelfleet agent status --format yaml")],
    "baseline": [("the drift baseline of a model version", "modelfleet baseline model.onnx --data sample.npz "
                                                           "--out baseline.json")],
    "check": [("the operator's machine, from the fleet clone you are in", "modelfleet check"),
              ("in CI: fail on warnings too, e.g. a TUF role expiring within 14 days",
               "modelfleet check --repo https://git.example.com/edge/fleet.git --tuf-repo tuf/ --expiry-warning 14d "
               "--strict --format json"),
              ("on a device, as the agent's user", "sudo -u modelfleet modelfleet check --agent-config "
                                                   "/etc/modelfleet/agent.yaml")],
    "completion": [("bash, in ~/.bashrc", 'eval "$(modelfleet completion bash)"'),
                   ("zsh, in ~/.zshrc", 'eval "$(modelfleet completion zsh)"'),
                   ("fish", "modelfleet completion fish | source")],
    "data": [("what waits on this device", "modelfleet data status")],
    "data export": [("copy batches to removable media", "modelfleet data export --out /media/usb --before 2026-11-01")],
    "data keygen": [("a campaign's key pair", "modelfleet data keygen --out campaign.key")],
    "data open": [("decrypt exported batches", "modelfleet data open --key campaign.key --out opened/ /media/usb")],
    "data purge": [("an erasure request", "modelfleet data purge --endpoint vibration --before 2026-11-01"),
                   ("see what would be removed", "modelfleet data purge --dry-run")],
    "data status": [("for a script", "modelfleet data status --format json")],
    "docs": [("the manifest reference", "modelfleet docs generate --output docs/manifests.md")],
    "docs cli": [("this command reference", "modelfleet docs cli --output docs/cli.md"),
                 ("in CI: fail when it is stale", "modelfleet docs cli --output docs/cli.md --check")],
    "docs generate": [("write the manifest reference", "modelfleet docs generate --output docs/manifests.md"),
                      ("in CI: fail when it is stale", "modelfleet docs generate --output docs/manifests.md --check")],
    "docs reasons": [("rewrite the runbook's reasons table", "modelfleet docs reasons --output docs/operations.md")],
    "explain": [("a kind's top-level fields", "modelfleet explain Deployment"),
                ("one field and its children", "modelfleet explain Deployment.spec.rollout.steps"),
                ("the same for a script", "modelfleet explain Model.spec.versions --format json")],
    "fleet": [("every device's last report", "modelfleet fleet status")],
    "fleet drift": [("a week of drift, with plots", "modelfleet fleet drift --since 7d --html drift.html")],
    "fleet history": [("what one device ran when", "modelfleet fleet history cam-berlin-03 --limit 10")],
    "fleet status": [("from the clone you are in (its origin)", "modelfleet fleet status"),
                     ("for a script", "modelfleet fleet status --repo https://git.example.com/edge/fleet.git "
                                      "--format json --stale-after 30m")],
    "optimize": [("variants for the fleet's hardware", "modelfleet optimize model.onnx --data sample.npz --out build/"),
                 ("and sign them, adding the version to the manifest",
                  "modelfleet optimize model.onnx --data sample.npz --out build/ --manifest models/classifier.yaml "
                  "--version 1.3.0 --publish tuf/ --keys keys/")],
    "plan": [("a pull request's effect, per device", "modelfleet plan --base origin/main"),
             ("in CI: a comment, and exit 2 when something changes",
              "modelfleet plan --base origin/main --format markdown --detailed-exitcode")],
    "render": [("one device's desired state", "modelfleet render --device cam-berlin-03"),
               ("a device the inventory does not list yet", "modelfleet render --device cam-oslo-01 --labels site=oslo"),
               ("which variant each hardware class runs", "modelfleet render --classes --format json")],
    "repo": [("what is signed", "modelfleet repo list tuf/")],
    "repo add": [("sign a model version", "modelfleet repo add tuf/ build/model.onnx --path vision/classifier/1.2.0 "
                                          "--keys keys/"),
                 ("check the keys and paths first", "modelfleet repo add tuf/ build/model.onnx --path "
                                                    "vision/classifier/1.2.0 --keys keys/ --dry-run")],
    "repo delegate": [("let a team sign under vision/", "modelfleet repo delegate tuf/ vision --prefix vision/ "
                                                        "--team-keys vision-keys/ --keys keys/"),
                      ("check the keys first; write nothing", "modelfleet repo delegate tuf/ vision --prefix vision/ "
                                                              "--team-keys vision-keys/ --keys keys/ --dry-run")],
    "repo gen-key": [("a model encryption key", "modelfleet repo gen-key model.key")],
    "repo init": [("a new repository", "modelfleet repo init tuf/ --keys keys/")],
    "repo list": [("the signed targets", "modelfleet repo list tuf/"),
                  ("for a script", "modelfleet repo list tuf/ --format json")],
    "repo refresh": [("from cron, before the timestamp expires", "modelfleet repo refresh tuf/ --keys keys/"),
                     ("would the keys sign?", "modelfleet repo refresh tuf/ --keys keys/ --dry-run")],
    "repo remove": [("unsign a version", "modelfleet repo remove tuf/ vision/classifier/1.0.0/model.onnx --keys keys/")],
    "repo rotate-key": [("replace the timestamp key", "modelfleet repo rotate-key tuf/ timestamp --root-keys keys-root/ "
                                                      "--keys keys/"),
                        ("would the root keys sign it?", "modelfleet repo rotate-key tuf/ timestamp --root-keys "
                                                         "keys-root/ --keys keys/ --dry-run")],
    "repo verify": [("in CI: fail when anything expires within 12 hours", "modelfleet repo verify tuf/ --within 12h")],
    "rollout": [("where a rollout stands", "modelfleet rollout status classifier")],
    "rollout abort": [("see the commit first", "modelfleet rollout abort classifier --reason 'accuracy drop' --dry-run"),
                      ("send every device back", "modelfleet rollout abort classifier --reason 'accuracy drop'")],
    "rollout pause": [("stop promoters for now", "modelfleet rollout pause classifier"),
                      ("as a pull request instead", "modelfleet rollout pause classifier --branch pause-classifier")],
    "rollout promote": [("see the commit first", "modelfleet rollout promote classifier --dry-run"),
                        ("advance one step", "modelfleet rollout promote classifier")],
    "rollout resume": [("let promoters continue", "modelfleet rollout resume classifier --dry-run")],
    "rollout status": [("per step: devices and gates", "modelfleet rollout status classifier"),
                       ("for a script", "modelfleet rollout status classifier --format json")],
    "rollout watch": [("promote and abort by the gates", "modelfleet rollout watch classifier --interval 5m"),
                      ("what it would do now", "modelfleet rollout watch classifier --dry-run")],
    "serve": [("serve a model file on port 8000", "modelfleet serve model.onnx"),
              ("an OpenVINO IR, named, on all interfaces", "modelfleet serve model.xml --name classifier "
                                                           "--host 0.0.0.0 --port 8080")],
    "gateway": [("a site's gateway, as systemd runs it", "modelfleet gateway run --config /etc/modelfleet/gateway.yaml")],
    "gateway run": [("serve the site: mirror, TUF cache, status relay",
                     "modelfleet gateway run --config /etc/modelfleet/gateway.yaml"),
                    ("JSON logs for journald", "modelfleet gateway run --config gateway.yaml --log-format json")],
    "gateway nginx-config": [("the nginx config, for a site that runs its own nginx",
                              "modelfleet gateway nginx-config --config gateway.yaml")],
    "gateway status": [("what the running gateway did last", "modelfleet gateway status --config gateway.yaml")],
    "simulate": [("the Device manifests (and status keys) of 1000 simulated devices, for the fleet repository",
                  "modelfleet simulate --devices 1000 --canaries 10 --status-keys keys/ --write-inventory "
                  "fleet/devices/"),
                 ("rehearse a rollout on them against nginx + git http-backend; end once 99 % report 1.1.0",
                  "modelfleet simulate --devices 1000 --canaries 10 --processes 2 --workers 16 "
                  "--repo https://git.example.com/git/fleet.git --username device --password-file device.pw "
                  "--status-keys keys/ --tuf https://tuf.example.com --trusted-root root.json "
                  "--poll-interval 10s --status-push-spread 10s --until reported:1.1.0:99% --duration 15m"),
                 ("status on 16 sharded status repositories; each device's polls and updates in the last line",
                  "modelfleet simulate --devices 1000 --repo https://git.example.com/git/fleet.git "
                  "--username device --password-file device.pw --status-repo https://git.example.com/git/status-00.git "
                  "--status-repo https://git.example.com/git/status-01.git --trusted-root root.json "
                  "--until converged --per-device --format table")],
    "tuf-client": [("trust a root", "modelfleet tuf-client --metadata-dir md/ init root.json")],
    "tuf-client download": [("fetch and verify a target", "modelfleet tuf-client --metadata-dir md/ --metadata-url "
                                                          "https://tuf.example.com/metadata --target-base-url "
                                                          "https://tuf.example.com/targets --target-dir out/ "
                                                          "--target-name vision/model.onnx download")],
    "tuf-client init": [("trust a root (no network)", "modelfleet tuf-client --metadata-dir md/ init root.json")],
    "tuf-client refresh": [("update the top-level metadata", "modelfleet tuf-client --metadata-dir md/ --metadata-url "
                                                             "https://tuf.example.com/metadata refresh")],
    "validate": [("the checkout you are in", "modelfleet validate"),
                 ("in CI: annotations, warnings fail", "modelfleet validate --repo fleet/ --strict --format github"),
                 ("a revision, without checking it out", "modelfleet validate --rev origin/main"),
                 ("before the push: every model signed, unchanged, and loadable with its declared inputs/outputs",
                  "modelfleet validate fleet/ --tuf-repo tuf-repo/")],
}

OK, FAIL, USAGE = "success", "failure: one `error: …` line on stderr", "usage error: bad option or argument"
DEFAULT_EXIT: dict[int, str] = {0: OK, 1: FAIL, 2: USAGE}
EXIT_CODES: dict[str, dict[int, str]] = {
    "validate": {0: "valid", 1: "invalid: errors (or warnings with --strict)",
                 2: "usage error, or PATH is not a directory"},
    "plan": {0: "success (with --detailed-exitcode: no change)", 1: FAIL,
             2: "with --detailed-exitcode: something changes; otherwise a usage error"},
    "agent keygen": {0: "key written (or shown with --show); the public key on stdout",
                     1: "a key exists already, or it cannot be written or read", 2: USAGE},
    "agent once": {0: "converged", 1: "not converged, or the pass could not run", 2: USAGE},
    "agent run": {0: "stopped by SIGTERM/SIGINT", 1: "could not start (bad config, port taken)", 2: USAGE},
    "render": {0: OK, 1: "failure, e.g. a --device the inventory does not list (and no --labels describe it)",
               2: USAGE},
    "serve": {0: "stopped by SIGTERM/SIGINT", 1: "a model failed to load, or the server could not start", 2: USAGE},
    "rollout promote": {0: "promoted (or shown, with --dry-run/--patch)", 1: FAIL, 2: USAGE,
                        3: "refused: the gates do not pass, or the rollout is paused or failed", 4: "refused: a commit on the branch is not signed by a trusted signer (or no anchors were given)"},
    "rollout abort": {0: "aborted (or shown)", 1: FAIL, 2: USAGE, 4: "refused: a commit on the branch is not signed by a trusted signer (or no anchors were given)"},
    "rollout pause": {0: "paused (or shown)", 1: FAIL, 2: USAGE, 4: "refused: a commit on the branch is not signed by a trusted signer (or no anchors were given)"},
    "rollout resume": {0: "resumed (or shown)", 1: FAIL, 2: USAGE, 4: "refused: a commit on the branch is not signed by a trusted signer (or no anchors were given)"},
    "rollout watch": {0: "complete, aborted, or the iteration bound reached", 1: FAIL, 2: USAGE, 4: "refused: a commit on the branch is not signed by a trusted signer (or no anchors were given)"},
    "repo verify": {0: "consistent and valid for --within", 1: "any problem (each on stderr)", 2: USAGE},
    "docs generate": {0: "written, or up to date with --check", 1: "stale (with --check)", 2: USAGE},
    "docs reasons": {0: "written, or up to date with --check", 1: "stale (with --check)", 2: USAGE},
    "docs cli": {0: "written, or up to date with --check", 1: "stale (with --check)", 2: USAGE},
    "data open": {0: "every batch opened",
                  1: "any batch rejected (tampered, truncated, wrong key, forged, unwritable); the others are opened",
                  2: USAGE},
    "optimize": {0: "at least one variant kept", 1: "an error, or no variant within the accuracy budget", 2: USAGE},
    "explain": {0: OK, 1: "unknown kind or field (the valid ones are listed)", 2: USAGE},
    "gateway run": {0: "stopped by SIGTERM/SIGINT (after relaying what was pending)",
                    1: "could not start (bad config, port taken, nginx or fcgiwrap missing)", 2: USAGE},
    "gateway status": {0: OK, 1: "no state: the gateway is not running (or never ran with this config)", 2: USAGE},
    "simulate": {0: "ran for --duration, or every --until condition held (or --write-inventory wrote the manifests)",
                 1: FAIL, 2: USAGE, 3: "--duration passed before every --until condition held",
                 130: "interrupted (Ctrl-C); the devices' last status pushes are waited for first"},
    "check": {0: "every check ok (warnings allowed unless --strict)",
              1: "a check failed: an error, or a warning with --strict (the table says which and what to do)",
              2: USAGE},
}


def epilog(path: str, is_group: bool) -> str:
    """The ``Examples:`` (and, for a command, ``Exit codes:``) sections; ``\\b`` keeps click from rewrapping them."""
    parts = []
    examples = EXAMPLES.get(path)
    if examples:
        lines = [f"  # {comment}\n  {command}" for comment, command in examples]
        parts.append("Examples:\n\n\b\n" + "\n".join(lines))
    if not is_group:
        codes = EXIT_CODES.get(path, DEFAULT_EXIT)
        parts.append("Exit codes:\n\n\b\n" + "\n".join(f"  {code}  {text}" for code, text in sorted(codes.items())))
    return "\n\n".join(parts)


def attach(cmd: click.Command, path: str) -> click.Command:
    """Set the epilog (and ``-h``) of ``cmd`` and of the sub-commands its group already holds (lazy ones attach
    on load)."""
    if not getattr(cmd, "_modelfleet_epilog", False):
        cmd.epilog = epilog(path, isinstance(cmd, click.Group))
        # `-h` everywhere, also in a context made without the root as parent (click caches a command's help
        # option the first time it is built, so this keeps --help output the same whoever asks first).
        cmd.context_settings.setdefault("help_option_names", ["-h", "--help"])
        cmd._modelfleet_epilog = True  # type: ignore[attr-defined]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            attach(sub, f"{path} {name}".strip())
    return cmd
