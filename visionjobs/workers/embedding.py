"""Embedding worker: ``faust -A visionjobs.workers.embedding worker -l info``.

``stream_wait_empty=True``: the agent awaits inference between reading a micro-batch and staging its
results, so a rebalance (or a graceful stop) must wait until the batch in flight is staged and acked
before the partitions' transactions end; otherwise results could be staged for a partition that is
no longer ours.
"""

from ..agents.embedding import register_embedding
from ..app import create_app
from ..settings import get_settings

settings = get_settings()
app = create_app("embedding", settings, stream_wait_empty=True)
embedding = register_embedding(app, settings)
