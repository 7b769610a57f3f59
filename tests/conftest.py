import sys
from pathlib import Path

import slipstream  # noqa: F401  (hides the broken torchvision before anything imports it)

# Test helpers (factories, module-level reward functions for the spawn-based reward runner) live
# in tests/ and are imported by name.
sys.path.insert(0, str(Path(__file__).parent))
