"""`python -m dashboard`: run the dashboard in the foreground with the settings from the environment."""

import sys

from dashboard.launch import run

sys.exit(run())
