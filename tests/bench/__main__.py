"""``python -m tests.bench``: see tests/bench/__init__.py."""

from tests.bench.run import main

main()
