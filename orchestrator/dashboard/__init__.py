"""The dashboard's static files (served by orchestrator.api.dashboard)."""
