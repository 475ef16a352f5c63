"""Every agent in one worker, for local use: ``faust -A visionjobs.workers.all worker -l info``.

The coordinator, the embedding agent and the keypoint agent share one app (role ``all``, one
consumer group). Production runs one worker per role (``visionjobs.workers.<role>``) so each scales
on its own; this module is for a laptop.
"""

from ..agents.coordinator import register_coordinator
from ..agents.embedding import register_embedding
from ..agents.keypoints import register_keypoints
from ..app import create_app
from ..settings import get_settings

settings = get_settings()
# stream_wait_empty: the vision agents hold a micro-batch across an await (see workers.embedding);
# the coordinator handles each event synchronously, so waiting costs it nothing.
app = create_app("all", settings, stream_wait_empty=True)
coordinators = register_coordinator(app, settings)
embedding = register_embedding(app, settings)
keypoints = register_keypoints(app, settings)
