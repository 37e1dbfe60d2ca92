"""`python -m tensorgate serve ...`: the same command as `tensorgate`."""

import sys

from tensorgate.cli import main

sys.exit(main())
