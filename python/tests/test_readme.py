"""The README's "From PyTorch" command runs as written (its python -c line, executed here)."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_runs():
    text = README.read_text()
    section = text[text.index("## From PyTorch"):]
    code = re.search(r'python -c "(.*?)"\n', section).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    loss, top1, shape = out.stdout.split(" ", 2)
    assert float(loss) > 0 and 0 <= int(top1) <= 8 and shape.strip() == "torch.Size([8, 128])"
