"""``python -m vespa_lib.sandbox.synth``: see ``vespa_lib.sandbox.synth.main``."""

import sys

from . import main

sys.exit(main())
