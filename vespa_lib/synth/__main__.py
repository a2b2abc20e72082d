"""``python -m vespa_lib.synth``: see ``vespa_lib.synth.main``."""

import sys

from . import main

sys.exit(main())
