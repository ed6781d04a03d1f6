"""``python -m datasets.prepare NAME --from PATH --to DATA_ROOT`` (see the package docstring)."""
import sys

from . import main

sys.exit(main())
