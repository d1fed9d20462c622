"""``python -m vidlang.cli``."""
import sys

from vidlang.cli import main

sys.exit(main())
