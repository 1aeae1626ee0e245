"""`python -m dashboard`: run the dashboard in the foreground with the settings from the environment."""

from dashboard.launch import run

run()
