"""``python -m pydkms`` runs the ``dkms`` command."""

import sys

from .cli import main

sys.exit(main())
