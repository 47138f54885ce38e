"""`python -m bench.doctor`: the thin entry point (flags in bench/cli/doctor.py)."""

import sys

from bench.cli.doctor import main

sys.exit(main())
