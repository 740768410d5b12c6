"""docs/kernels.md's example runs: its ```python blocks, in order, as one script."""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "kernels.md"


def test_kernels_doc_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert blocks, "docs/kernels.md has no python example"
    script = tmp_path / "kernels_doc.py"
    script.write_text("\n".join(blocks))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, f"the example in {DOC} failed:\n{done.stderr}"
    assert done.stdout.strip().endswith("(4, 5, 16)")
