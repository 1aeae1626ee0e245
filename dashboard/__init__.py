"""The Streamlit dashboard; talks to the API over HTTP only."""
