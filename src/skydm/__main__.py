"""``python -m skydm``."""

import sys

from skydm.cli.main import main

sys.exit(main())
