"""`python -m imprint` is the `imprint` command."""

from imprint.main import run

run()
