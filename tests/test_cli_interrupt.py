"""Ctrl-C during `segflow run`: a short message (no traceback), exit 130, and the command it gives goes on with
exactly this run."""
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ctrl_c_stops_cleanly_and_the_run_resumes(tmp_path):
    sets = [f"data_loader.data_dir={tmp_path / 'p2d'}", "data_loader.synthetic_cases=12",
            "data_loader.image_size=32", "trainer.epochs=1000"]  # far more than can run before the Ctrl-C
    cmd = [sys.executable, "-m", "segflow", "run", str(ROOT / "workflows" / "quickstart.json"), "--device", "cpu",
           "--no-progress", *sum((["--set", s] for s in sets), [])]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # history.json is written just after each epoch's last.pt: once it is there, an epoch is complete
    while not list(tmp_path.glob("runs/quickstart/2*/history.json")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    (run,) = [p for p in (tmp_path / "runs" / "quickstart").iterdir() if not p.is_symlink()]
    command = shlex.split(re.search(r"interrupted; continue with `(.+)`", err).group(1))
    # the same file, overrides and device, and this run's own checkpoint (not --resume auto)
    assert command[:3] == ["segflow", "run", str(ROOT / "workflows" / "quickstart.json")]
    assert (tmp_path / command[command.index("--resume") + 1]).resolve() == (run / "checkpoints" / "last.pt").resolve()
    assert all(s in command for s in sets) and command[command.index("--device") + 1] == "cpu"
    done = len(json.loads((run / "history.json").read_text()))
    assert 1 <= done < 1000

    resumed = subprocess.run([sys.executable, "-m", "segflow", *command[1:], "--no-progress",
                              "--set", f"trainer.epochs={done + 2}"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((run / "history.json").read_text())  # the same run directory goes on
    assert [row["epoch"] for row in history] == list(range(1, done + 3))
