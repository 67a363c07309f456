import sys
from pathlib import Path

# tests import helpers (golden.py, reference_models.py) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))
