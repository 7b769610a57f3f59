import sys
from pathlib import Path

import pytest

import slipstream  # noqa: F401  (hides the broken torchvision before anything imports it)

# Test helpers (factories, module-level reward functions for the spawn-based reward runner) live
# in tests/ and are imported by name.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path to a tiny random Qwen2 (2 layers) with its tokenizer, made once per session: the model
    the end-to-end tests (tests/e2e_helpers.py) run."""
    from slipstream.launch.models import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2"))
