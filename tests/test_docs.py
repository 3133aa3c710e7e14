"""The README's code runs: every ```python block, and every line of its quick start (```sh blocks
after the set-up commands), in a fresh folder, each within the two minutes the README promises."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.M | re.S)


def quick_start_lines() -> list[str]:
    """The commands of the quick start: each `.venv/bin/...` line of the sh blocks after the first."""
    return [line for block in blocks("sh")[1:] for line in block.splitlines() if line.startswith(".venv/bin/")]


def test_the_readme_has_what_a_newcomer_needs():
    assert blocks("sh")[0].strip().splitlines() == [
        "make demo   # installs everything into .venv, then analyzes pretrained EfficientNet-Lite0 on the bundled photos",
        "make test   # installs everything, then runs the test suite (what CI runs)"]
    assert len(README.splitlines()) <= 200 and len(quick_start_lines()) >= 5
    for paper in ("1812.04056", "2309.06626", "2106.12850"):
        assert paper in README
    for link in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+|LICENSE|CHANGELOG.md)", README):
        assert (ROOT / link).is_file(), link


DOCS = sorted((ROOT / "docs").rglob("*.md"))


def _doc_blocks(language: str) -> list[str]:
    return [b for page in DOCS for b in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.M | re.S)]


def test_results_pages_are_generated_from_the_current_json():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pages.py"), "--check"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]


def test_the_docs_site_builds_with_every_link_resolved(tmp_path):
    p = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]


@pytest.mark.parametrize("code", blocks("python") + _doc_blocks("python"))
def test_readme_and_docs_python_blocks_run(code, tmp_path):
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-1000:] + p.stderr[-2000:]


def test_readme_quick_start_runs(tmp_path):
    for line in quick_start_lines():
        command = line.split("  #")[0].replace(".venv/bin/", f"{BIN}/")
        p = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, command + "\n" + p.stdout[-1000:] + p.stderr[-2000:]
