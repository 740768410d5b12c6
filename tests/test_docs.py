"""The tutorial's code runs: every ```python block of docs/tutorial.md, in order, as one script.

The blocks are written to one file, each preceded by a comment naming its
line in the tutorial, and run in a fresh Python process on the default
device: kernels need a real source file (kdsl reads them with `inspect`),
and a process of its own keeps the tutorial's environment variables
(KDSL_INTERPRET, KDSL_DUMP) away from the other tests.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "docs" / "tutorial.md"

_FENCE = re.compile(r"^```(\S*)\s*$")


def code_blocks(markdown_text, language="python"):
    """[(line number of the opening fence, code)] for each fenced block in `language`."""
    blocks = []
    current = None
    for number, line in enumerate(markdown_text.splitlines(), start=1):
        fence = _FENCE.match(line)
        if current is None and fence:
            current = (number, fence.group(1), [])
        elif current is not None and line.strip() == "```":
            if current[1] == language:
                blocks.append((current[0], "\n".join(current[2]) + "\n"))
            current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, f"unclosed code fence at line {current[0]}"
    return blocks


def test_code_blocks_are_found_in_order():
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a\n```\n"
    assert code_blocks(text) == [(2, "a = 1\n"), (8, "b = a\n")]


def test_tutorial_runs(tmp_path):
    blocks = code_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 10, "the tutorial lost its code blocks"
    script = tmp_path / "tutorial.py"
    script.write_text("".join(f"# docs/tutorial.md:{line}\n{code}\n" for line, code in blocks))
    env = {k: v for k, v in os.environ.items() if k not in ("KDSL_INTERPRET", "KDSL_DUMP")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"the tutorial failed (script {script}; '# docs/tutorial.md:LINE' comments mark "
        f"its blocks):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    assert "unknown name 'offz'" in result.stdout
    assert "out of bounds" in result.stdout
