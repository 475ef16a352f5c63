"""One module per worker role: ``faust -A visionjobs.workers.<role> worker``."""
