"""`python -m aepo_trainer.cli` is the `aepo` command."""

import sys

from aepo_trainer.cli import main

sys.exit(main())
