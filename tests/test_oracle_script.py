"""`python tests/test_oracle.py` (the figures of docs/interop.md) without torch says it
skipped and exits 0: no traceback."""
import os
import subprocess
import sys

def test_the_oracle_script_without_torch_says_it_skipped_and_exits_0(tmp_path):
    blocker = tmp_path / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'torch\'", name="torch")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_oracle.py")
    p = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "skipped" in p.stdout and "torch" in p.stdout
    assert "Traceback" not in p.stderr and "Skipped" not in p.stderr
