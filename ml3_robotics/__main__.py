"""``python -m ml3_robotics``: the ml3r command."""

import sys

from ml3_robotics.app.cli import main

sys.exit(main())
