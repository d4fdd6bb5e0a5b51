"""`python -m imprint` is the `imprint` command."""

import sys

from imprint.main import main

sys.exit(main())
