"""Where bundles live: reading and checking a directory, writing one atomically, hub references."""
