"""`autoresearch launch`: a SkyPilot task that runs this project's loop on N GPU nodes with Ray.

`write_task()` writes the task file; `up()` (`--up`) runs it with `sky launch`, copies the
results back and fetches the best branch. What the task does on the cluster:
- file_mounts: the project's git history as one bundle (HEAD and, when it exists, the
  branch `autoresearch/<tag>`, so a run can continue on the cluster);
- setup, on every node: install autoresearch with its `ray` extra (`--install`; default:
  this version from PyPI) and the project's requirements.txt if it has one, and clone the
  bundle to ~/autoresearch-project;
- run, on every node: rank 0 starts the Ray head on port 6379 (SkyPilot's own Ray uses
  6380), waits for every node to join, and runs `autoresearch run --engine ray --address
  auto --workers <nodes x GPUs per node>` in the project folder; the other ranks join it
  and block. Each node prepares its data once (`experiment.setup`, see engines/runner.py).
  Every 10 minutes and at the end, the head writes ~/autoresearch-out/<tag>/: ledger.db (an
  SQLite backup), results.tsv, progress.png, report.md and <tag>.bundle (the branch).
- `up()`: `sky launch -y -c CLUSTER TASK` (with `--secret NAME` for each secret: the value
  is read from your environment, never written to the file), then pulls
  ~/autoresearch-out/<tag>/ into .autoresearch/remote/<cluster>/ with rsync (SkyPilot adds
  the cluster to ~/.ssh/config), fetches `autoresearch/<tag>` from the bundle, copies the
  ledger to .autoresearch/ledger.db when there is none, and with `down=True` runs `sky down`.

Guarantees: the file is plain YAML that `sky.Task.from_yaml` accepts (tested); nothing in
it depends on this machine except the bundle path; a dirty checkout is refused (the run
must start from a commit). Not covered: choosing a cloud or prices (SkyPilot does that),
merging a cluster's ledger into a local one that already has rows.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import __version__
from .errors import AutoresearchError, WorkspaceError
from .layout import Layout
from .workspace import Workspace

RAY_PORT = 6379  # SkyPilot runs its own Ray on 6380
OUT = "~/autoresearch-out"


@dataclass
class LaunchSpec:
    tag: str
    nodes: int = 2
    accelerators: str = "H100:1"  # SkyPilot's NAME:COUNT per node ("" = CPU nodes)
    cloud: str = ""
    spot: bool = False
    workers: Optional[int] = None  # default: nodes x GPUs per node
    max_hours: Optional[float] = None
    max_experiments: Optional[int] = None
    agent: str = ""
    install: str = f"autoresearch[ray]=={__version__}"
    secrets: list[str] = field(default_factory=list)
    cluster: str = ""

    @property
    def cluster_name(self) -> str:
        return self.cluster or f"autoresearch-{self.tag}".lower().replace("_", "-").replace(".", "-")


def write_task(root: Path, spec: LaunchSpec, out: Optional[Path] = None) -> Path:
    """Write the bundle and the task file for the project at `root`; returns the task file's path."""
    if spec.nodes < 1:
        raise AutoresearchError(f"--nodes must be at least 1 (got {spec.nodes})")
    for name in spec.secrets:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise AutoresearchError(f"--secret {name!r} is not an environment variable name")
    ws = Workspace(root, spec.tag)
    dirty = ws.dirty_tracked()
    if dirty:
        raise WorkspaceError(f"uncommitted changes to tracked files ({', '.join(dirty[:5])}): commit them first, "
                             "so the cluster starts from a known state")
    folder = Layout(root).launch
    folder.mkdir(parents=True, exist_ok=True)
    bundle = folder / f"{spec.tag}.bundle"
    refs = ["HEAD"] + ([ws.ref] if ws.git.ok("rev-parse", "--verify", "--quiet", ws.ref) else [])
    ws.git("bundle", "create", str(bundle), *refs)
    path = Path(out) if out else folder / f"{spec.tag}.sky.yaml"
    path.write_text(render(spec, bundle.resolve(), ws.prefix), encoding="utf-8")
    return path


def render(spec: LaunchSpec, bundle: Path, prefix: str) -> str:
    """The task file's text (YAML: strings as JSON-quoted scalars, scripts as literal blocks)."""
    q = json.dumps
    lines = [f"# autoresearch launch: the loop on {spec.nodes} node(s), Ray across them. Start it with",
             f"#   sky launch -c {spec.cluster_name} " + "".join(f"--secret {s} " for s in spec.secrets) + "THIS_FILE",
             f"name: {q(spec.cluster_name)}", f"num_nodes: {spec.nodes}", "resources:"]
    if spec.accelerators:
        lines.append(f"  accelerators: {q(spec.accelerators)}")
    else:
        lines.append("  cpus: \"4+\"")
    if spec.cloud:
        lines.append(f"  cloud: {q(spec.cloud)}")
    if spec.spot:
        lines.append("  use_spot: true")
    lines += ["file_mounts:", f"  ~/.autoresearch-launch/{spec.tag}.bundle: {q(str(bundle))}", "envs:"]
    envs = {"AUTORESEARCH_TAG": spec.tag, "AUTORESEARCH_PROJECT": prefix or ".",
            "AUTORESEARCH_WORKERS": str(spec.workers or ""), "AUTORESEARCH_INSTALL": spec.install,
            "RAY_AUTH_MODE": "disabled"}  # Ray listens inside the cluster's network only (SkyPilot opens SSH)
    lines += [f"  {k}: {q(v)}" for k, v in envs.items()]
    if spec.secrets:
        lines += ["secrets:"] + [f"  {name}: null" for name in spec.secrets]
    lines += ["setup: |", _indent(SETUP), "run: |", _indent(RUN.replace("RUN_ARGS", _run_args(spec)))]
    return "\n".join(lines) + "\n"


def _run_args(spec: LaunchSpec) -> str:
    args = ["--tag", '"$AUTORESEARCH_TAG"', "--engine", "ray", "--address", "auto", "--workers", '"$WORKERS"',
            "--no-live"]
    if spec.max_hours is not None:
        args += ["--max-hours", f"{spec.max_hours:g}"]
    if spec.max_experiments is not None:
        args += ["--max-experiments", str(spec.max_experiments)]
    if spec.agent:
        args += ["--agent", shlex.quote(spec.agent)]
    return " ".join(args)


def _indent(text: str) -> str:
    return "\n".join(("  " + line) if line else "" for line in text.strip("\n").splitlines())


SETUP = r"""
set -e
pip install -q "$AUTORESEARCH_INSTALL"
rm -rf ~/autoresearch-project
git clone -q ~/.autoresearch-launch/$AUTORESEARCH_TAG.bundle ~/autoresearch-project
cd ~/autoresearch-project
git fetch -q ~/.autoresearch-launch/$AUTORESEARCH_TAG.bundle \
  'refs/heads/autoresearch/*:refs/heads/autoresearch/*' || true
if [ -f "$AUTORESEARCH_PROJECT/requirements.txt" ]; then pip install -q -r "$AUTORESEARCH_PROJECT/requirements.txt"; fi
"""

RUN = r"""
HEAD_IP=$(echo "$SKYPILOT_NODE_IPS" | head -n1)
if [ "$SKYPILOT_NODE_RANK" != "0" ]; then
  sleep 10
  exec ray start --address "$HEAD_IP:RAY_PORT" --disable-usage-stats --block
fi
ray start --head --port RAY_PORT --disable-usage-stats
python - "$SKYPILOT_NUM_NODES" <<'PY'
import sys, time
import ray
ray.init(address="auto", logging_level="ERROR")
want, deadline = int(sys.argv[1]), time.time() + 900
while len([n for n in ray.nodes() if n["Alive"]]) < want and time.time() < deadline:
    time.sleep(2)
print(f"autoresearch launch: {len([n for n in ray.nodes() if n['Alive']])} of {want} nodes in the Ray cluster")
PY
PER_NODE=${SKYPILOT_NUM_GPUS_PER_NODE:-0}; [ "$PER_NODE" -gt 0 ] || PER_NODE=1
WORKERS=${AUTORESEARCH_WORKERS:-$((SKYPILOT_NUM_NODES * PER_NODE))}
OUT=OUT_DIR/$AUTORESEARCH_TAG
cd ~/autoresearch-project/$AUTORESEARCH_PROJECT
sync_out() {
  mkdir -p $OUT
  BACKUP="import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))"
  [ -f .autoresearch/ledger.db ] && python -c "$BACKUP" .autoresearch/ledger.db $OUT/ledger.db
  for f in results.tsv progress.png report.md; do [ -f $f ] && cp $f $OUT/; done
  git bundle create $OUT/$AUTORESEARCH_TAG.bundle "autoresearch/$AUTORESEARCH_TAG" 2>/dev/null || true
}
(while sleep 600; do sync_out; done) &
autoresearch run RUN_ARGS
status=$?
autoresearch report --tag "$AUTORESEARCH_TAG" || true
sync_out
ray stop
exit $status
""".replace("RAY_PORT", str(RAY_PORT)).replace("OUT_DIR", OUT)


def up(root: Path, spec: LaunchSpec, task: Path, down: bool = False) -> Path:
    """Launch the task, bring its results back; returns the folder they were copied to."""
    sky = shutil.which("sky")
    if sky is None:
        raise AutoresearchError("`sky` is not on PATH: pip install 'autoresearch[skypilot]' (or skypilot), run "
                                "`sky check` to set up a cloud or Kubernetes, then launch again")
    cmd = [sky, "launch", "-y", "-c", spec.cluster_name, str(task)]
    for name in spec.secrets:
        cmd += ["--secret", name]
    if subprocess.run(cmd).returncode != 0:
        raise AutoresearchError(f"`{' '.join(cmd)}` failed (see its output above); the cluster may still be up: "
                                f"`sky status`, and `sky down {spec.cluster_name}` when done")
    dest = pull(root, spec)
    if down:
        subprocess.run([sky, "down", "-y", spec.cluster_name])
    return dest


def pull(root: Path, spec: LaunchSpec) -> Path:
    """Copy the cluster's ~/autoresearch-out/<tag>/ here and fetch its branch."""
    dest = Layout(root).remote(spec.cluster_name)
    dest.mkdir(parents=True, exist_ok=True)
    rsync = shutil.which("rsync")
    src = f"{spec.cluster_name}:{OUT.replace('~/', '')}/{spec.tag}/"
    cmd = [rsync, "-az", src, f"{dest}/"] if rsync else ["scp", "-rq", src.rstrip("/") + "/.", str(dest)]
    if subprocess.run(cmd).returncode != 0:
        raise AutoresearchError(f"could not copy the results back (`{' '.join(cmd)}`): is the cluster up? "
                                f"`sky status`; then `autoresearch launch --pull --tag {spec.tag}`")
    ws = Workspace(root, spec.tag)
    bundle = dest / f"{spec.tag}.bundle"
    if bundle.exists() and not ws.git.ok("fetch", "-q", str(bundle), f"{ws.ref}:{ws.ref}"):
        raise AutoresearchError(f"could not fetch {ws.branch} from {bundle}: the local branch has other commits; "
                                f"fetch it under another name: "
                                f"git fetch {bundle} {ws.ref}:refs/heads/cluster-{spec.tag}")
    ledger = Layout(root).ledger
    if (dest / "ledger.db").exists() and not ledger.exists():
        shutil.copy2(dest / "ledger.db", ledger)
    return dest
