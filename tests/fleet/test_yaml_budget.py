"""The YAML node budget holds per file and per repository load: alias bombs spread over documents or files.

Issue S, before: a 24 KB file of 100 small alias bombs (~122k nodes each after expansion) made `modelfleet
validate` take 18 s and 2.9 GB, because the 200,000-node budget restarted for every document.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.fleet import yamlsafe
from reconciler.fleet.manifests import load_files
from reconciler.fleet.yamlsafe import NodeBudget, YamlError, load_documents

CORPUS = Path(__file__).resolve().parents[1] / "corpus"

BOMB = """apiVersion: modelfleet/v1
kind: Device
metadata:
  name: d{i}
spec:
  labels: {{}}
x:
  a: &a{i} [x, x, x, x, x, x, x]
  b: &b{i} [*a{i}, *a{i}, *a{i}, *a{i}, *a{i}, *a{i}, *a{i}]
  c: &c{i} [*b{i}, *b{i}, *b{i}, *b{i}, *b{i}, *b{i}, *b{i}]
  d: &d{i} [*c{i}, *c{i}, *c{i}, *c{i}, *c{i}, *c{i}, *c{i}]
  e: &e{i} [*d{i}, *d{i}, *d{i}, *d{i}, *d{i}, *d{i}, *d{i}]
  f: [*e{i}, *e{i}, *e{i}, *e{i}, *e{i}, *e{i}, *e{i}]
"""


def bombs(n: int) -> str:
    return "---\n".join(BOMB.format(i=i) for i in range(n))


def test_one_bomb_document_fits_but_the_file_budget_spans_documents() -> None:
    one = load_documents(bombs(1), "one.yaml")
    assert len(one) == 1 and len(one[0].data["x"]["f"]) == 7
    # No positions are recorded inside alias expansions: one entry per written node, not per expanded one.
    assert len(one[0].positions) < 200
    with pytest.raises(YamlError, match="the file expands to more than 200000 YAML nodes") as err:
        load_documents(bombs(2), "two.yaml")
    assert err.value.line > 14  # in the second document


def test_the_load_budget_spans_files() -> None:
    budget = NodeBudget(200_000, "repository load")
    load_documents(bombs(1), "a.yaml", budget)
    with pytest.raises(YamlError, match="the repository load expands to more than 200000 YAML nodes"):
        load_documents(bombs(1), "b.yaml", budget)


def test_repository_load_stops_at_the_load_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsafe, "MAX_NODES_PER_LOAD", 300_000)
    files = {f"devices/bomb{i:03}.yaml": bombs(1).encode() for i in range(50)}
    files["fleet.yaml"] = (CORPUS / "base" / "fleet.yaml").read_bytes()
    result = load_files(files)
    spent = [d for d in result.diagnostics if "repository load" in d.message]
    assert spent and spent[-1].file.startswith("devices/bomb00")
    assert "not loaded" in spent[-1].message and "files left" in spent[-1].message


def test_validate_on_100_bomb_documents_exits_1_naming_the_file_quickly(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(CORPUS / "base", repo)
    bomb = repo / "devices" / "bomb.yaml"
    bomb.write_text(bombs(100))
    assert 20_000 < bomb.stat().st_size < 40_000
    out_file, err_file, hwm_file = tmp_path / "out", tmp_path / "err", tmp_path / "status"
    # The validate process's own peak RSS: VmHWM belongs to the exec'd image. (ru_maxrss would also count the
    # pytest worker's pages at fork time, hundreds of MB once a runtime has been loaded in that worker.)
    code = ("import atexit, sys; atexit.register(lambda: open(sys.argv.pop(), 'w').write(open('/proc/self/status').read()));"
            "from reconciler.cli.main import main; main(sys.argv[1:-1])")
    t0 = time.monotonic()
    with open(out_file, "w") as out_fh, open(err_file, "w") as err_fh:
        proc = subprocess.Popen([sys.executable, "-c", code, "validate", str(repo), str(hwm_file)],
                                stdout=out_fh, stderr=err_fh)
        proc.wait(timeout=60)
    elapsed = time.monotonic() - t0
    hwm_kb = next(int(line.split()[1]) for line in hwm_file.read_text().splitlines() if line.startswith("VmHWM:"))
    peak_mb = hwm_kb / 1024
    out, err = out_file.read_text(), err_file.read_text()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    assert any(line.startswith(f"{bomb}:") and "expands to more than" in line for line in err.splitlines()), err
    assert elapsed < 10, elapsed
    assert 5 < peak_mb < 500, peak_mb
