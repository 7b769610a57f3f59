"""Loaded at start-up by every Python process slipstream starts (its folder is put on
PYTHONPATH by slipstream/__init__.py): hides the broken vision packages before anything imports
them. See slipstream/__init__.py for why."""

import sys

for _name in ("torchvision", "torchaudio", "torchcodec"):
    sys.modules.setdefault(_name, None)
