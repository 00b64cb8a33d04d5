"""``python -m qa.load``: see ``qa.load.runner``."""

import sys

from qa.load.runner import main

sys.exit(main())
