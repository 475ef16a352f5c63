"""Coordinator worker: ``faust -A visionjobs.workers.coordinator worker -l info``."""

from ..agents.coordinator import register_coordinator
from ..app import create_app
from ..settings import get_settings

settings = get_settings()
app = create_app("coordinator", settings)
coordinator = register_coordinator(app, settings)
