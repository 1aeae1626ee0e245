"""Prefect flows (dispatch, reconcile); `prefect.yaml` points here."""
