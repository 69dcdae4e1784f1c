"""``python -m flashparity``: the same CLI as the ``flashparity`` console script."""

import sys

from .cli import main

sys.exit(main())
