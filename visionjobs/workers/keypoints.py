"""Keypoint worker: ``faust -A visionjobs.workers.keypoints worker -l info``.

``stream_wait_empty=True`` for the same reason as the embedding worker: a micro-batch is in flight
across an ``await`` (extraction on the thread pool) before its results are staged.
"""

from ..agents.keypoints import register_keypoints
from ..app import create_app
from ..settings import get_settings

settings = get_settings()
app = create_app("keypoints", settings, stream_wait_empty=True)
keypoints = register_keypoints(app, settings)
